//! `cargo xtask docs OUT_DIR`: writes OUT_DIR/man/*.8 (hostchan(8) and one page per command)
//! and OUT_DIR/completions/{hostchan.bash,_hostchan,hostchan.fish}, all from the clap
//! definitions in hostchan's `cli` module, so that they never drift from the binary.
//! `cargo xtask nri-api` and `cargo xtask cri-api`: the protocol crates' generated code.

use std::fs;
use std::io::Write;

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["docs", out] => docs(Path::new(out)),
        ["nri-api"] => nri_api(),
        ["cri-api"] => cri_api(),
        _ => {
            eprintln!(
                "usage: cargo xtask docs OUT_DIR | cargo xtask nri-api | cargo xtask cri-api"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Regenerates crates/nri-api/src/{api,api_ttrpc}.rs from the vendored NRI api.proto, with
/// containerd's own ttrpc code generator (no protoc needed). The output is committed, so that a
/// build needs neither the generator nor the .proto compiler.
fn nri_api() -> Result<Vec<PathBuf>> {
    let krate = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/nri-api");
    let dir = krate.join("src");
    ttrpc_codegen::Codegen::new()
        .out_dir(&dir)
        .inputs([krate.join("api.proto")])
        .include(&krate)
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(
            ttrpc_codegen::ProtobufCustomize::default()
                .gen_mod_rs(false)
                .generate_accessors(false),
        )
        .run()
        .context("ttrpc-codegen failed")?;
    let ttrpc = dir.join("api_ttrpc.rs");
    // The generated services need no unsafe code: keep the crate's deny in force there too.
    let text = fs::read_to_string(&ttrpc)?.replace("#![allow(unsafe_code)]\n", "");
    fs::write(&ttrpc, text)?;
    Ok(vec![dir.join("api.rs"), ttrpc])
}

/// Regenerates crates/cri-api/src/runtime.v1.rs (the CRI's messages and its clients; the tests'
/// and benchmarks' CRI client) from the vendored Kubernetes CRI api.proto, with protox, a
/// protobuf compiler in Rust, and tonic's generator: committed, so that no build needs protoc.
fn cri_api() -> Result<Vec<PathBuf>> {
    let krate = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/cri-api");
    let descriptors = protox::compile([krate.join("proto/api.proto")], [krate.join("proto")])
        .context("protox could not compile the CRI api.proto")?;
    tonic_prost_build::configure()
        .build_server(false)
        // Clients over any channel the caller makes (the tests' is a unix socket's).
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(krate.join("src"))
        .compile_fds(descriptors)
        .context("tonic's code generator failed")?;
    Ok(vec![krate.join("src/runtime.v1.rs")])
}

fn docs(out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = man_pages(&out.join("man"))?;
    written.extend(completions(&out.join("completions"))?);
    Ok(written)
}

const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
A failure while doing what was asked: systemd refused or failed a job, the owner unit is missing
or not running, the channel exists already or does not exist, a file could not be written.
.TP
\fB2\fR
Bad usage, a bad spec or a bad configuration file: the caller must change what it asked for.
Nothing was created.
.PP
With \fB\-\-output json\fR a failure is printed on standard output as
\fB{"error": "..."}\fR, one line saying what is wrong with which value.
"#;

const FILES: &str = r#".SH FILES
.TP
\fI/etc/hostchan/config.toml\fR
Optional configuration; see \fBhostchan\-config\fR(8).
.TP
\fI/var/lib/hostchan/channels/\fR
One record per channel, used by \fBlist\fR, \fBstatus\fR, \fBdelete \-\-container\fR and
\fBgc\fR.
.TP
\fI/usr/share/containers/oci/hooks.d/hostchan.json\fR
The OCI hook definition for podman and CRI\-O; see \fBhostchan\-oci\-hook\fR(8).
.TP
\fIhostchan\-gc.service\fR
Runs \fBhostchan gc\fR early at boot.
"#;

fn see_also(pages: &[String], this: &str) -> String {
    let mut refs: Vec<String> = pages
        .iter()
        .filter(|page| page.as_str() != this)
        .map(|page| format!("\\fB{}\\fR(8)", page.replace('-', "\\-")))
        .collect();
    refs.extend(
        [
            "systemctl(1)",
            "journalctl(1)",
            "systemd.mount(5)",
            "tmpfs(5)",
        ]
        .iter()
        .map(|r| {
            let (name, section) = r.split_once('(').unwrap_or((r, ""));
            format!("\\fB{name}\\fR({section}")
        }),
    );
    format!(".SH \"SEE ALSO\"\n{}\n", refs.join(",\n"))
}

fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut root = hostchan::cli::Cli::command();
    root.build();
    let version = leak(root.get_version().unwrap_or_default().to_owned());
    // hostchan(8), then one page per command, nested ones included (hostchan-config-check).
    let mut commands = vec![("hostchan".to_owned(), root)];
    let mut next = 0;
    while next < commands.len() {
        let (page, command) = commands[next].clone();
        for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            commands.push((format!("{page}-{}", sub.get_name()), sub.clone()));
        }
        next += 1;
    }
    let pages: Vec<String> = commands.iter().map(|(page, _)| page.clone()).collect();

    let mut written = Vec::new();
    for (page, command) in commands {
        let path = dir.join(format!("{page}.8"));
        let see_also = see_also(&pages, &page);
        let extra: &[&str] = if page == "hostchan" {
            &[EXIT_STATUS, FILES, &see_also]
        } else {
            &[EXIT_STATUS, &see_also]
        };
        let command = command.name(leak(page)).version(version);
        write_page(&path, command, extra)
            .with_context(|| format!("cannot write the man page {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// clap takes `&'static str` unless its "string" feature is on; this process is short.
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// A command's after-help text (examples, the configuration file) as a verbatim section: the
/// text is laid out by hand, which filling would undo.
fn verbatim_section(command: &clap::Command) -> Option<String> {
    let text = command
        .get_after_long_help()
        .or_else(|| command.get_after_help())?
        .to_string();
    let (title, body) = text.split_once('\n')?;
    let escaped: Vec<String> = body
        .lines()
        .map(|line| {
            let line = line.replace('\\', "\\e").replace('-', "\\-");
            // A line starting with . or ' would be a roff request.
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line
            }
        })
        .collect();
    let title = title.trim_end_matches(':').to_uppercase();
    Some(format!(
        ".SH \"{title}\"\n.nf\n.RS 4\n{}\n.RE\n.fi\n",
        escaped.join("\n")
    ))
}

fn write_page(path: &Path, command: clap::Command, extra: &[&str]) -> Result<()> {
    let man = clap_mangen::Man::new(command.clone())
        .section("8")
        .manual("System Manager's Manual")
        .source(format!(
            "hostchan {}",
            command.get_version().unwrap_or_default()
        ));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    if command.has_subcommands() {
        man.render_subcommands_section(&mut page)?;
    }
    if let Some(section) = verbatim_section(&command) {
        page.write_all(section.as_bytes())?;
    }
    for section in extra {
        page.write_all(section.as_bytes())?;
    }
    man.render_version_section(&mut page)?;
    fs::write(path, page)?;
    Ok(())
}

/// clap_complete offers hidden subcommands too (`cleanup`, which only the cleanup units run);
/// completions get the command without them.
fn without_hidden_commands(command: clap::Command) -> clap::Command {
    let visible: Vec<clap::Command> = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect();
    let mut bare = clap::Command::new("hostchan").args(command.get_arguments().cloned());
    if let Some(version) = command.get_version() {
        bare = bare.version(leak(version.to_owned()));
    }
    bare.subcommands(visible)
}

fn completions(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut command = without_hidden_commands(hostchan::cli::Cli::command());
        written.push(clap_complete::generate_to(
            shell,
            &mut command,
            "hostchan",
            dir,
        )?);
    }
    Ok(written)
}
