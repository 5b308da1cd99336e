//! `punchraw completions` and `punchraw man`: shell completions and man pages generated from
//! the clap definitions in [`super::args`], so they can never disagree with `--help`.

use super::args::{Cli, CompletionsArgs, ManArgs};
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::io::Write;
use std::path::Path;

/// Writes the completion script for `a.shell` to `out`.
pub fn completions(a: &CompletionsArgs, out: &mut dyn Write) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "punchraw", out);
    out.flush().context("writing the completion script")
}

/// The man pages: `(file name, roff)` for punchraw(1) and punchraw-COMMAND(1) per command.
pub fn pages() -> Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut pages = vec![("punchraw.1".to_string(), render(cmd.clone())?)];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        // The page of a command is named as man(1) looks it up: `man punchraw-connect`.
        let name = format!("punchraw-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("punchraw {}", sub.get_name()))
            .version(env!("CARGO_PKG_VERSION"));
        pages.push((format!("{name}.1"), render(page)?));
    }
    Ok(pages)
}

fn render(cmd: clap::Command) -> Result<Vec<u8>> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut roff)
        .context("rendering a man page")?;
    Ok(roff)
}

/// `punchraw man`: the pages into `--out-dir`, or punchraw(1) to `out`.
pub fn man(a: &ManArgs, out: &mut dyn Write) -> Result<()> {
    let pages = pages()?;
    let Some(dir) = &a.out_dir else {
        out.write_all(&pages[0].1)?;
        return out.flush().context("writing the man page");
    };
    write_pages(dir, &pages)
}

fn write_pages(dir: &Path, pages: &[(String, Vec<u8>)]) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {}: give a directory you can write", dir.display()))?;
    for (name, roff) in pages {
        let path = dir.join(name);
        std::fs::write(&path, roff).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_per_command_each_naming_itself() {
        let pages = pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|p| p.0.as_str()).collect();
        for want in [
            "punchraw.1",
            "punchraw-serve.1",
            "punchraw-probe.1",
            "punchraw-connect.1",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        assert!(!names.contains(&"punchraw-help.1"), "{names:?}");
        for (name, roff) in &pages {
            let text = String::from_utf8_lossy(roff);
            let title = name.trim_end_matches(".1");
            assert!(text.contains(".TH"), "{name} has no title line");
            assert!(text.contains(title), "{name} does not name {title}");
        }
        let connect = &pages
            .iter()
            .find(|p| p.0 == "punchraw-connect.1")
            .unwrap()
            .1;
        let text = String::from_utf8_lossy(connect);
        assert!(
            text.contains("\\-\\-server"),
            "connect's page lists its flags"
        );
    }

    #[test]
    fn completions_cover_every_command_for_each_shell() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completions(&CompletionsArgs { shell }, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            // fish names long options without their dashes (`-l server`).
            for word in [
                "serve",
                "probe",
                "connect",
                "server",
                "session",
                "syn-engine",
            ] {
                assert!(text.contains(word), "{shell:?}: no {word}");
            }
        }
    }
}
