//! Topic names and subscription patterns: dot-separated tokens, `*` for one token, `>` for the rest.

use std::sync::Arc;

use crate::error::{Error, Result};

/// The longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

fn check_common(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err("longer than 255 bytes");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or a control character");
    }
    if name.split('.').any(str::is_empty) {
        return Err("empty token (leading, trailing or double dot)");
    }
    Ok(())
}

/// Checks that `topic` is a valid topic to publish on.
///
/// A topic is one or more non-empty tokens separated by dots, at most 255 bytes, without whitespace,
/// and without the wildcard tokens `*` and `>` (those belong to patterns).
///
/// # Errors
///
/// [`Error::InvalidTopic`] with the reason.
///
/// # Examples
///
/// ```
/// use mixbus_bus::validate_topic;
/// assert!(validate_topic("orders.created").is_ok());
/// assert!(validate_topic("orders..created").is_err());
/// assert!(validate_topic("orders.*").is_err());
/// ```
pub fn validate_topic(topic: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    };
    check_common(topic).map_err(invalid)?;
    if topic.contains(['*', '>']) {
        return Err(invalid(
            "wildcards `*` and `>` are only allowed in patterns",
        ));
    }
    Ok(())
}

thread_local! {
    /// The topic this thread validated last: publishers mostly repeat their topic.
    static LAST_VALID: std::cell::RefCell<Option<Arc<str>>> = const { std::cell::RefCell::new(None) };
}

/// [`validate_topic`], remembering the last valid topic of this thread so that publishing on
/// the same topic again costs a pointer or string compare.
pub(crate) fn validate_topic_cached(topic: &Arc<str>) -> Result<()> {
    validate_cached(
        topic,
        |last| Arc::ptr_eq(last, topic) || **last == **topic,
        || topic.clone(),
    )
}

/// [`validate_topic_cached`] for a borrowed topic (kept as an `Arc<str>` when new).
pub(crate) fn validate_topic_str_cached(topic: &str) -> Result<()> {
    validate_cached(topic, |last| **last == *topic, || Arc::from(topic))
}

fn validate_cached(
    topic: &str,
    known: impl Fn(&Arc<str>) -> bool,
    keep: impl FnOnce() -> Arc<str>,
) -> Result<()> {
    if LAST_VALID.with_borrow(|last| last.as_ref().is_some_and(known)) {
        return Ok(());
    }
    validate_topic(topic)?;
    LAST_VALID.with_borrow_mut(|last| *last = Some(keep()));
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(String),
    One,
    Rest,
}

/// A parsed subscription pattern: a topic whose tokens may be `*` (exactly one token) or,
/// as the last token only, `>` (one or more remaining tokens).
///
/// # Examples
///
/// ```
/// use mixbus_bus::Pattern;
/// let p = Pattern::parse("orders.*.created")?;
/// assert!(p.matches("orders.eu.created"));
/// assert!(!p.matches("orders.eu.west.created"));
/// assert!(Pattern::parse("orders.>")?.matches("orders.eu.west.created"));
/// assert!(Pattern::parse("orders.>.x").is_err());
/// # Ok::<(), mixbus_bus::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    tokens: Vec<Token>,
}

impl Pattern {
    /// Parses a pattern.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPattern`] when the pattern is empty, has an empty token, a wildcard inside a
    /// token, or `>` anywhere but the last token.
    pub fn parse(pattern: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        check_common(pattern).map_err(invalid)?;
        let parts: Vec<&str> = pattern.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let token = match *part {
                "*" => Token::One,
                ">" if i + 1 == parts.len() => Token::Rest,
                ">" => return Err(invalid("`>` is only allowed as the last token")),
                p if p.contains(['*', '>']) => {
                    return Err(invalid("a wildcard must be a whole token"));
                }
                p => Token::Literal(p.to_owned()),
            };
            tokens.push(token);
        }
        Ok(Self {
            source: pattern.to_owned(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern has no wildcard (it matches exactly one topic).
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Whether `topic` matches this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for token in &self.tokens {
            match token {
                Token::Rest => return parts.next().is_some(),
                Token::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(lit) => {
                    if parts.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        for ok in ["a", "a.b", "orders.created.v1", "a-b_c.d"] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a b", "a.*", "a.>", "a*b", "x\n",
        ] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic(&"a".repeat(256)).is_err());
    }

    #[test]
    fn patterns() {
        let p = |s| Pattern::parse(s).unwrap();
        assert!(p("a.b").matches("a.b"));
        assert!(!p("a.b").matches("a.b.c"));
        assert!(!p("a.b").matches("a"));
        assert!(p("a.*").matches("a.b"));
        assert!(!p("a.*").matches("a"));
        assert!(!p("a.*").matches("a.b.c"));
        assert!(p("*.b").matches("a.b"));
        assert!(p("a.>").matches("a.b"));
        assert!(p("a.>").matches("a.b.c.d"));
        assert!(!p("a.>").matches("a"));
        assert!(p(">").matches("x.y"));
        assert!(p("*.*.c").matches("a.b.c"));
        assert!(p("a.b").is_literal());
        assert!(!p("a.*").is_literal());
        for bad in ["", "a.>.b", "a*", "a.b>", "a..b", ">.a"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
