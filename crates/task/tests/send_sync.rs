//! Every handle and value of the task layer that crosses threads is `Send` (and `Sync` where shared).

use mixbus_task::pump::Context;
use mixbus_task::pump::eventq::net::TcpStream;
use mixbus_task::{
    AcceptTask, CloseTask, ConnectError, ConnectOptions, ConnectTask, Error, FrameDecoder,
    FrameError, Outbox, PushError, ReceiveOutcome, ReceiveTask, SendOptions, SendOutcome, SendTask,
};

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}

type OnAccept = fn(TcpStream, std::net::SocketAddr, &mut Context<'_>);
type OnConnect = fn(Result<TcpStream, ConnectError>, &mut Context<'_>);
type OnClose = fn(&SendOutcome, &mut Context<'_>);

#[test]
fn smoke() {
    send_sync::<Outbox>();
    send_sync::<SendOptions>();
    send_sync::<ConnectOptions>();
}

#[test]
fn errors_and_outcomes_cross_threads() {
    send_sync::<ConnectError>();
    send_sync::<PushError>();
    send_sync::<Error>();
    send_sync::<FrameError>();
    send_sync::<SendOutcome>();
    send_sync::<ReceiveOutcome>();
    send_sync::<FrameDecoder>();
}

#[test]
fn tasks_can_be_posted_from_any_thread() {
    send::<AcceptTask<OnAccept>>();
    send::<ConnectTask<OnConnect>>();
    send::<CloseTask<OnClose>>();
    send::<SendTask>();
    send::<ReceiveTask<Box<dyn mixbus_task::ReceiveEvents>>>();
}
