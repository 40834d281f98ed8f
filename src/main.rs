//! The `tokenfile` command: a thin `main` over the library, which parses the arguments, runs
//! the command and maps its result to an exit code ([`tokenfile::cli::main`]).

fn main() -> std::process::ExitCode {
    tokenfile::cli::main()
}
