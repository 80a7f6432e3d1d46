//! The `wgnorm` command line, built on the library. Its modules are the binary's own, not
//! library API.

mod cli;
mod plot;
mod report;

fn main() -> std::process::ExitCode {
    cli::main()
}
