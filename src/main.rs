fn main() -> std::process::ExitCode {
    tokenfile::cli::main()
}
