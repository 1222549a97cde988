//! `envol volume grow VOLUME --size [+]N`: here when nobody has the volume
//! attached, else through the control socket of the server that has.
//!
//! How the command knows which: it asks the volume, not a server. It takes
//! the volume's exclusive attachment as any writer does; if that is
//! refused because another attachment holds it, the grow belongs to the
//! holder, and the command asks the server at `--control` (or its
//! default). The lock is the one authority on who holds a volume (a
//! server's control socket only knows its own exports), and trying the
//! lock first never sends a detached volume to a server that might have
//! attached another volume of the same name.

use super::address::CephArgs;
use super::control::{ControlArgs, as_attached, ask_holder, unexpected};
use super::error::{CliError, CliResult};
use super::target::{human_size, parse_size};
use crate::control::{Command, ReplyBody};
use crate::envelope::VolumeAddress;
use crate::envelope::grow::{GrowRefusal, grow};
use crate::volume::NewSize;

#[derive(Debug, clap::Args)]
pub struct GrowArgs {
    /// The volume: a file, or rbd:POOL/IMAGE (a file whose name starts with `rbd:` is written ./rbd:...).
    #[arg(value_name = "VOLUME")]
    pub volume: String,
    /// The new size of the volume (bytes or K/M/G/T, as for `create`), or +N to grow it by N. A multiple of its sector size; never smaller than it is.
    #[arg(long, value_parser = parse_new_size, allow_hyphen_values = true)]
    pub size: NewSize,
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub ceph: CephArgs,
}

/// `N` (the new size) or `+N` (so much more), N as `parse_size` reads it.
pub fn parse_new_size(s: &str) -> Result<NewSize, String> {
    match s.trim().strip_prefix('+') {
        // One sign only (u64's parser would take another).
        Some(more) if more.starts_with('+') => Err(format!(
            "invalid size {s:?}: use N or +N, N in bytes or with a K/M/G/T suffix"
        )),
        Some(more) => parse_size(more).map(NewSize::Plus),
        None => parse_size(s).map(NewSize::To),
    }
}

pub fn run(args: GrowArgs) -> CliResult {
    let volume = args.ceph.volume(&args.volume)?;
    match grow(&volume, args.size) {
        Ok(grown) => {
            report(
                &volume.to_string(),
                grown.old_size,
                grown.new_size,
                grown.beyond_change_tracking,
            );
            Ok(())
        }
        Err(GrowRefusal::Failed(e)) => Err(CliError::from(e)),
        Err(GrowRefusal::Attached(refusal)) => through_server(&args, &volume, &refusal),
    }
}

/// The volume is attached elsewhere: ask the server at `--control`.
fn through_server(
    args: &GrowArgs,
    volume: &VolumeAddress,
    refusal: &dyn std::fmt::Display,
) -> CliResult {
    let path = args.control.path()?;
    let (size, add) = match args.size {
        NewSize::To(n) => (n, false),
        NewSize::Plus(n) => (n, true),
    };
    let command = Command::Grow {
        volume: as_attached(volume)?,
        size,
        add,
    };
    let reply = ask_holder(&path, command, refusal)?;
    let ReplyBody::Grown {
        name,
        volume,
        old_size,
        new_size,
        beyond_change_tracking,
    } = reply
    else {
        return Err(unexpected(&reply));
    };
    report(&volume, old_size, new_size, beyond_change_tracking);
    if old_size != new_size {
        say!(
            "  through the server at {} (export {name}): new connections see the new size; connected clients keep the old one until they reconnect",
            path.display()
        );
    }
    Ok(())
}

fn report(volume: &str, old_size: u64, new_size: u64, beyond_change_tracking: bool) {
    if old_size == new_size {
        say!(
            "{volume} is already {} ({new_size} bytes): nothing to do",
            human_size(new_size)
        );
        return;
    }
    say!(
        "Grew {volume} from {} to {} ({new_size} bytes); the new space reads as zeros",
        human_size(old_size),
        human_size(new_size)
    );
    if beyond_change_tracking {
        say!(
            "  note: the volume is now larger than change tracking covers (~7 TiB): its snapshots compare every chunk's hash"
        );
    }
}

#[cfg(test)]
#[path = "volume_grow_tests.rs"]
mod tests;
