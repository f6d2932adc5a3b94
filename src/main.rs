//! The `tenantry` binary: everything lives in the library; see `tenantry::cli`.

fn main() -> std::process::ExitCode {
    tenantry::cli::main()
}
