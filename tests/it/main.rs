//! The integration tests, one binary: every module runs the real `tokenfile` binary or the
//! library through `support`, so the binary is linked once and the helpers exist once.

mod support;

mod adversary;
mod cli_adversarial;
mod cli_audit;
mod cli_basic;
mod cli_concurrency;
mod cli_crash;
mod cli_edit;
mod cli_errors;
mod cli_faults;
mod cli_lossless;
mod cli_routes;
mod cli_scopes;
mod cli_secrets;
mod cli_seen;
mod cli_writes;
mod contrib;
mod fault_disk;
mod fault_durability;
mod fault_hostile;
mod fault_kill;
mod fault_parallel;
mod fault_reload;
mod fault_syscall;
mod fuzz_format;
mod fuzz_scope;
mod nginx;
mod readme;
mod redaction;
mod secrets_everywhere;
mod seen_hostile;
mod serve_consistency;
mod serve_forward;
mod serve_http;
mod serve_inplace;
mod serve_reload;
mod serve_seen;
mod serve_socket;
mod sidecars;
mod trust;
