//! `hsmd-fuzz TARGET`: one fuzz target under AFL++'s persistent mode. Run it with
//! `scripts/fuzz TARGET MINUTES`; `hsmd-fuzz --list` names the targets.

use audit_chain::fuzz::Target;

fn targets() -> impl Iterator<Item = &'static Target> {
    hsmd::fuzz::TARGETS
        .iter()
        .chain(hsm_client::fuzz::TARGETS)
        .chain(audit_chain::fuzz::TARGETS)
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    if name == "--list" || name.is_empty() {
        for t in targets() {
            println!("{}", t.name);
        }
        return;
    }
    let Some(target) = targets().find(|t| t.name == name) else {
        eprintln!("hsmd-fuzz: no target '{name}' (hsmd-fuzz --list names them)");
        std::process::exit(2);
    };
    let run = target.run;
    afl::fuzz!(|data: &[u8]| run(data));
}
