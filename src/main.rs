fn main() -> std::process::ExitCode {
    wgnorm::cli::main()
}
