//! Helpers shared by the integration tests (`mod common;` in each test file).
//! Each test binary uses a subset, hence the dead_code allowance.
#![allow(dead_code)]

pub mod lab;
