//! The command line explains itself: every flag and argument has help text,
//! every `envol key` subcommand takes `--json`, and `--help` shows what the
//! README promises.

mod common;

use clap::CommandFactory;
use common::{envol, run_ok};
use envol::cli::Cli;

/// Every subcommand, depth first, with its full name ("envol key create").
fn walk(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
    out.push((path.clone(), cmd.clone()));
    for sub in cmd.get_subcommands() {
        walk(sub, format!("{path} {}", sub.get_name()), out);
    }
}

fn all_commands() -> Vec<(String, clap::Command)> {
    let mut root = Cli::command();
    root.build();
    let mut out = Vec::new();
    walk(&root, "envol".into(), &mut out);
    out
}

#[test]
fn every_argument_has_help_text() {
    let mut missing = Vec::new();
    let mut seen = 0;
    for (path, cmd) in all_commands() {
        if cmd.get_about().is_none() && path != "envol help" && !path.starts_with("envol help ") {
            missing.push(format!("{path} (the command itself)"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            seen += 1;
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            if help.trim().is_empty() {
                missing.push(format!("{path}: {id}"));
            }
        }
    }
    // The walk really visited the tree (it is not vacuously true).
    assert!(seen > 60, "only {seen} arguments found");
    assert!(missing.is_empty(), "no help text: {missing:#?}");
}

#[test]
fn every_key_subcommand_takes_json() {
    let commands = all_commands();
    let key_subs: Vec<_> = commands
        .iter()
        .filter(|(p, _)| p.starts_with("envol key ") && !p.starts_with("envol key help"))
        .collect();
    assert_eq!(
        key_subs.len(),
        9,
        "{:?}",
        key_subs.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for (path, cmd) in key_subs {
        assert!(
            cmd.get_arguments().any(|a| a.get_long() == Some("json")),
            "{path} has no --json"
        );
    }
}

#[test]
fn help_shows_rewrap_and_defaults() {
    let volume = run_ok(envol().args(["volume", "--help"]));
    assert!(volume.contains("rewrap"), "{volume}");
    let top = run_ok(envol().arg("--help"));
    assert!(top.contains("rewrap"), "{top}");
    let schedule = run_ok(envol().args(["key", "schedule-deletion", "--help"]));
    assert!(schedule.contains("[default: 30]"), "{schedule}");
    let up = run_ok(envol().args(["up", "--help"]));
    assert!(up.contains("[default: 127.0.0.1:4598]"), "{up}");
    assert!(up.contains("[default: envol-up]"), "{up}");
}
