//! The `corral` binary: a thin face over the library (see `corral::cli`).

fn main() -> std::process::ExitCode {
    corral::cli::main()
}
