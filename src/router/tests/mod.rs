//! Fake-clock scenarios of the routing core: one file per behaviour, all on [`harness`].

mod harness;

mod broadcast;
mod flow_control;
mod handshake;
mod heartbeat;
mod limits;
mod presence;
mod random;
mod request_reply;
