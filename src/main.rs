//! The `punchraw` binary: everything it does is [`punchraw::cli::main`].

fn main() -> std::process::ExitCode {
    punchraw::cli::main()
}
