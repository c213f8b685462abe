// nats-go: nats-server through NATS's reference client, nats.go (the client
// NATS's own `nats bench` is built on), measured the way `mixbus bench`
// measures the bus: deliveries per second from the first publish to the last
// delivery, every delivery counted.
//
// Usage: nats-go ADDR WORKLOAD SIZE COUNT [SUBSCRIBERS [RATE]], with WORKLOAD
// one of pubsub, fanout, group (a NATS queue group: no acks, NATS core has
// none) or reqrep (one request outstanding; prints p50 and p99; with RATE, at
// most that many requests per second). The output has the shape of
// compare/nats-official's, so compare/ab.sh can run either (NATS_BIN=...).
//
// Build (Debian's golang-go and golang-github-nats-io-go-nats-dev, no network):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o compare/nats-go/nats-go compare/nats-go/main.go
package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

const subject = "compare.x"
const idle = 2 * time.Second

func main() {
	if len(os.Args) < 5 {
		fmt.Fprintln(os.Stderr, "usage: nats-go ADDR pubsub|fanout|group|reqrep SIZE COUNT [SUBSCRIBERS [RATE]]")
		os.Exit(2)
	}
	url := "nats://" + os.Args[1]
	workload := os.Args[2]
	size := atoi(os.Args[3])
	count := atoi(os.Args[4])
	subscribers := map[string]int{"fanout": 4, "group": 2}[workload]
	if subscribers == 0 {
		subscribers = 1
	}
	if len(os.Args) > 5 {
		subscribers = atoi(os.Args[5])
	}
	if workload == "reqrep" {
		rate := 0.0
		if len(os.Args) > 6 {
			r, err := strconv.ParseFloat(os.Args[6], 64)
			check(err)
			rate = r
		}
		reqrep(url, size, count, rate)
		return
	}

	expected := count * subscribers
	if workload == "group" {
		expected = count
	}
	var delivered atomic.Int64
	var last atomic.Int64 // UnixNano of the last delivery, once all came
	done := make(chan struct{})
	for i := 0; i < subscribers; i++ {
		nc, err := nats.Connect(url)
		check(err)
		defer nc.Close()
		handler := func(m *nats.Msg) {
			if len(m.Data) != size {
				panic("wrong payload size")
			}
			// The clock is read once, by the last delivery: a clock read per message would
			// slow NATS's subscriber down, and this baseline should not.
			if delivered.Add(1) == int64(expected) {
				last.Store(time.Now().UnixNano())
				close(done)
			}
		}
		var sub *nats.Subscription
		if workload == "group" {
			sub, err = nc.QueueSubscribe(subject, "g", handler)
		} else {
			sub, err = nc.Subscribe(subject, handler)
		}
		check(err)
		// No limit on a subscriber's pending messages, so that the client never drops one
		// as a slow consumer (the bus drops none).
		check(sub.SetPendingLimits(-1, -1))
		check(nc.Flush())
	}
	pub, err := nats.Connect(url)
	check(err)
	defer pub.Close()
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = 7
	}
	start := time.Now()
	for i := 0; i < count; i++ {
		check(pub.Publish(subject, payload))
	}
	check(pub.Flush())
	// Wait for every delivery, or for an idle spell with none (then the run ends at the last
	// change seen, to within a millisecond).
	seen, seenAt := int64(0), time.Now()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-time.After(time.Millisecond):
			if n := delivered.Load(); n != seen {
				seen, seenAt = n, time.Now()
			} else if time.Since(seenAt) >= idle {
				last.Store(seenAt.UnixNano())
				waiting = false
			}
		}
	}
	got := delivered.Load()
	seconds := time.Duration(last.Load() - start.UnixNano()).Seconds()
	fmt.Printf("nats-go %s size %d: published %d delivered %d/%d in %.3f s: %.0f msgs/s\n",
		workload, size, count, got, expected, seconds, float64(got)/seconds)
}

// reqrep times round trips, one outstanding; with rate > 0, at most that many requests per
// second, evenly spaced (as `mixbus bench --rate`).
func reqrep(url string, size, count int, rate float64) {
	server, err := nats.Connect(url)
	check(err)
	defer server.Close()
	_, err = server.Subscribe(subject, func(m *nats.Msg) {
		check(m.Respond(m.Data))
	})
	check(err)
	check(server.Flush())
	client, err := nats.Connect(url)
	check(err)
	defer client.Close()
	payload := make([]byte, size)
	times := make([]time.Duration, 0, count)
	start := time.Now()
	for i := 0; i < count; i++ {
		if rate > 0 {
			due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
			}
		}
		sent := time.Now()
		answer, err := client.Request(subject, payload, 5*time.Second)
		check(err)
		times = append(times, time.Since(sent))
		if len(answer.Data) != size {
			panic("wrong reply size")
		}
	}
	sort.Slice(times, func(a, b int) bool { return times[a] < times[b] })
	fmt.Printf("nats-go reqrep size %d: %d requests, p50 %.1f us, p99 %.1f us\n",
		size, count, us(times[count/2]), us(times[count*99/100]))
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	check(err)
	return n
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats-go:", err)
		os.Exit(1)
	}
}
