//! Shared by the integration tests: `mod support;` in a test file brings in
//! [`agent`] (a scripted feedback endpoint) and [`postfix`] (a private Postfix
//! instance). Each test uses only part of it.
#![allow(dead_code)]

pub mod agent;
pub mod fake_api;
pub mod lab_receiver;
pub mod postfix;
pub mod process;
pub mod rbldnsd;
