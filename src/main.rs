#![forbid(unsafe_code)]
//! `casetag`: the command line. Thin glue: parse flags into a config, call
//! the libraries, map errors to exit codes (2 bad input/usage, 1 internal
//! failure, 3 release gate failed or drift found with `monitor --fail-on-drift`).

mod cmd;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tag e-commerce aftersales customer-service cases with a three-level tag
/// (L1/L2/L3) and the automated actions the tag implies.
#[derive(Parser)]
#[command(name = "casetag", version, about, long_about = None)]
struct Cli {
    /// Log filter (also RUST_LOG), e.g. `info` or `casetag_engine=debug`.
    #[arg(long, global = true, env = "CASETAG_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Clean, mask, validate and split a case table into Parquet splits.
    Prepare(cmd::prepare::Args),
    /// Train a baseline or transformer model and write a self-contained bundle.
    Train(Box<cmd::train::Args>),
    /// Evaluate one or more models on a labelled table; write report.json and report.html.
    Eval(cmd::eval::Args),
    /// Tag a case table in batch (streams the input, keeps every row).
    Tag(cmd::tag::Args),
    /// Compare a current tagged file with a reference one: label mix, confidence and rate drift.
    Monitor(cmd::monitor::Args),
    /// Queue the tagged cases worth a human's time (uncertain, out of scope, disputed), near-duplicates grouped; CSV, Label Studio and Argilla exports.
    Review(cmd::review::Args),
    /// Serve real-time tag lookups over HTTP.
    Serve(cmd::serve::Args),
    /// Manage the model registry under models/ (list, show, promote).
    Models(cmd::models::Args),
    /// Print a shell completion script, e.g. `casetag completions bash >
    /// ~/.local/share/bash-completion/completions/casetag`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// An error with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn input(m: impl std::fmt::Display) -> Self {
        Self {
            code: 2,
            message: m.to_string(),
        }
    }
    pub fn internal(m: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: m.to_string(),
        }
    }
}

impl From<casetag_engine::EngineError> for Failure {
    fn from(e: casetag_engine::EngineError) -> Self {
        if e.is_input() {
            Failure::input(e)
        } else {
            Failure::internal(e)
        }
    }
}

impl From<casetag_data::DataError> for Failure {
    fn from(e: casetag_data::DataError) -> Self {
        if e.is_input() {
            Failure::input(e)
        } else {
            Failure::internal(e)
        }
    }
}

impl From<casetag_batch::job::JobError> for Failure {
    fn from(e: casetag_batch::job::JobError) -> Self {
        if e.is_input() {
            Failure::input(e)
        } else {
            Failure::internal(e)
        }
    }
}

pub type CmdResult = Result<(), Failure>;

/// A usage error as one line: clap's message with its indented details
/// (possible values, missing flags) folded in, without the usage block and
/// the `--help` hint. Help and version print as clap prints them.
fn parse_args() -> Result<Cli, ExitCode> {
    use clap::error::ErrorKind;
    let e = match Cli::try_parse() {
        Ok(cli) => return Ok(cli),
        Err(e) => e,
    };
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    eprintln!("{}", one_line_usage_error(&e.render().to_string()));
    Err(ExitCode::from(2))
}

/// Fold clap's rendered error (plain text) into one line.
fn one_line_usage_error(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line);
        }
    }
    format!("{} (see --help)", parts.join(" "))
}

fn main() -> ExitCode {
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let r = match cli.command {
        Command::Prepare(a) => cmd::prepare::run(a),
        Command::Train(a) => cmd::train::run(*a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Tag(a) => cmd::tag::run(a),
        Command::Monitor(a) => cmd::monitor::run(a),
        Command::Review(a) => cmd::review::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Models(a) => cmd::models::run(a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "casetag",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // One line, whatever the error carried, with control characters
            // escaped (messages can quote file names and column names).
            let msg = f.message.replace(['\n', '\r'], " ");
            eprintln!("error: {}", casetag_data::printable(&msg));
            ExitCode::from(f.code)
        }
    }
}
