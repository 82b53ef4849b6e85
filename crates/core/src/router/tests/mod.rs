//! Fake-clock scenarios of the routing core: one file per behaviour, all on [`harness`].

mod harness;

mod admission;
mod auth;
mod broadcast;
mod budget;
mod busiest;
mod control_frames;
mod corners;
mod flow_control;
mod fuzz_scenarios;
mod half_close;
mod handshake;
mod heartbeat;
mod identity;
mod limits;
mod mass_cleanup;
mod presence;
mod presence_overflow;
mod random;
mod request_reply;
mod scope;
mod stuck_receiver;
