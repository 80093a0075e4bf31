//! End-to-end tests: the real daemon binary in network namespaces made by each test, real
//! scanners (nmap) in an attacker namespace beside it. Needs root, iproute2 and nmap.

mod classic;
mod config_errors;
mod lab;
mod lua;
mod reload;
