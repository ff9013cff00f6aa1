//! `hsmctl`: the command-line client of hsmd. Parsing and the commands live in `cli/`;
//! this file only maps their result to an exit status (0 ok, 1 negative answer,
//! 2 error with one `error: <CODE> <REASON>: <message>` line on stderr).

mod cli;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.run().await {
        Ok(verdict) => verdict.into(),
        Err(e) => {
            eprintln!("{}", e.line());
            ExitCode::from(2)
        }
    }
}
