//! Fake-clock scenarios of the routing core: one file per behaviour, all on [`harness`].

mod harness;

mod auth;
mod broadcast;
mod busiest;
mod control_frames;
mod corners;
mod flow_control;
mod fuzz_scenarios;
mod half_close;
mod handshake;
mod heartbeat;
mod limits;
mod presence;
mod random;
mod request_reply;
