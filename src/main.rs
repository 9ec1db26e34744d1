//! The `stemflow` command line: parses the arguments and calls the application layer
//! (`stemflow_app`), the way every other front end does.
//!
//! With no subcommand it runs one 4D-STEM scan on the embedded simulated instrument.
//! `acquire` drives a real or external Merlin, `process` reduces a recording offline,
//! `sim merlin` serves the Merlin simulator, `bench merlin` measures the live path.
//!
//! Exit status: 0 done; 1 an error; 130 cancelled by Ctrl-C, 143 by SIGTERM, 129 by SIGHUP
//! (the results so far are written and marked `cancelled`; a second signal quits at once).

mod cli;

use clap::Parser;
use std::io::IsTerminal as _;

fn main() -> std::process::ExitCode {
    // Before any thread starts: a long queue must not grow its heap unit by unit.
    stemflow_app::memory::limit_malloc_arenas();
    let args = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEMFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour codes only for a terminal: a log redirected to a file stays plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match cli::dispatch(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<stemflow_app::Cancelled>() {
                // The outputs are written and marked cancelled; this is not a failure.
                eprintln!("stemflow: {c}");
                return std::process::ExitCode::from(c.exit_code());
            }
            // Many errors already state their cause in their own message; print each cause once.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("stemflow: error: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}
