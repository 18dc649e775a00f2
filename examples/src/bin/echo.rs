//! `echo`: the smallest useful corral agent. It returns its input unchanged.

use corral_sdk::{run_value, Contract, SideEffects};

fn main() -> std::process::ExitCode {
    let contract =
        Contract::new("echo", env!("CARGO_PKG_VERSION")).side_effects(SideEffects::ReadOnly);
    run_value(contract, |ctx, input| {
        ctx.progress();
        Ok(input)
    })
}
