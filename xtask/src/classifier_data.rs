//! `classifier-data`: regenerates the classifier's catalog-derived data files
//! from a live PostgreSQL server.
//!
//! Each generated file (`nonvolatile_builtins.txt`, `keywords.txt`) holds, in
//! its header, the query that generates it on its `#>` lines. This task runs
//! that query and rewrites the file: the header as it is (with the server's
//! major version in its `# Generated from PostgreSQL N` line), then one line a
//! row. In `keywords.txt` it keeps the tags of each word (`paren`,
//! `since=N`), and keeps the words tagged `since=N` with `N` later than the
//! server's release, which the server cannot know. The files kept by hand are
//! only read, to note names the server does not know.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Options of `classifier-data`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server whose catalog to read, as a postgres:// URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The data directory [default: routing-core/src/classify/data in this
    /// workspace].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Change no file; exit with status 1 if a refresh would change one.
    #[arg(long)]
    check: bool,
}

/// Whether the files match the server's catalog (after writing them, unless
/// `--check`).
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// The files match the catalog.
    UpToDate,
    /// `--check` found a file that a refresh would change.
    Stale,
}

/// How a generated file turns query rows into lines.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// One name a row.
    Names,
    /// A keyword and its category a row; the tags come from the file.
    Keywords,
}

/// The generated files, and how each is written.
const GENERATED: [(&str, Shape); 2] = [
    ("nonvolatile_builtins.txt", Shape::Names),
    ("keywords.txt", Shape::Keywords),
];

/// The curated function lists, checked against the server's functions.
const CURATED_FUNCTIONS: [&str; 2] = ["replica_safe_volatile.txt", "primary_only.txt"];

/// The header line that names the release a file was generated from.
const GENERATED_FROM: &str = "# Generated from PostgreSQL ";

/// Runs `classifier-data`.
pub(crate) async fn run(args: Args) -> Result<Outcome, String> {
    let dir = args.data_dir.unwrap_or_else(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
        workspace
            .unwrap_or(Path::new(".."))
            .join("routing-core/src/classify/data")
    });
    let (client, connection) = tokio_postgres::connect(&args.database_url, NoTls)
        .await
        .map_err(|error| format!("cannot connect to the server: {error}"))?;
    let driver = tokio::spawn(connection);

    let version = rows(&client, "SHOW server_version_num").await?;
    let major = version
        .first()
        .and_then(|row| row.first())
        .and_then(|v| v.parse::<u32>().ok())
        .map(|num| num / 10_000)
        .ok_or("cannot read the server's version")?;
    println!("PostgreSQL {major}");

    let mut outcome = Outcome::UpToDate;
    let mut nonvolatile = BTreeSet::new();
    for (file, shape) in GENERATED {
        let path = dir.join(file);
        let old = fs::read_to_string(&path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let (header, body) = split_header(&old);
        let sql = query_of(&header).ok_or_else(|| format!("{file} has no `#>` query lines"))?;
        let rows = rows(&client, &sql)
            .await
            .map_err(|error| format!("{file}: {error}"))?;
        let lines = match shape {
            Shape::Names => names(&rows).map_err(|error| format!("{file}: {error}"))?,
            Shape::Keywords => keywords(&rows, &body, major, file)?,
        };
        if let Shape::Names = shape {
            nonvolatile = lines.iter().cloned().collect();
        }
        report(file, &entries(&body), &lines);
        let new = render(&header, &lines, major);
        if new == old {
            continue;
        }
        if args.check {
            println!("  {file} is out of date");
            outcome = Outcome::Stale;
        } else {
            fs::write(&path, new)
                .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
            println!("  wrote {}", path.display());
        }
    }

    let known: BTreeSet<String> = rows(&client, "SELECT DISTINCT proname FROM pg_proc")
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next())
        .collect();
    for file in CURATED_FUNCTIONS {
        let path = dir.join(file);
        let text = fs::read_to_string(&path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        for name in entries(&text) {
            if !known.contains(&name) {
                println!(
                    "  note: {file}: `{name}` is not a function of this server (not in \
                     PostgreSQL {major}, or from an extension that is not installed)"
                );
            }
            if file == "replica_safe_volatile.txt" && nonvolatile.contains(&name) {
                println!(
                    "  warning: {file}: `{name}` is immutable or stable in PostgreSQL {major}: \
                     remove it from {file} (the build refuses a name in both)"
                );
            }
        }
    }

    drop(client);
    // The driver ends once the client is gone; its own error is moot.
    let _ = driver.await;
    Ok(outcome)
}

/// Runs `sql` and returns its rows, every column as text.
async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|error| format!("query failed: {error}"))?;
    let mut rows = Vec::new();
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            let columns = (0..row.len())
                .map(|i| row.get(i).map(str::to_owned).ok_or("a NULL column"))
                .collect::<Result<_, _>>()?;
            rows.push(columns);
        }
    }
    Ok(rows)
}

/// Splits a file into its header (the comment and blank lines before the
/// first entry) and the rest.
fn split_header(text: &str) -> (Vec<&str>, String) {
    let mut lines = text.lines().peekable();
    let mut header = Vec::new();
    while let Some(line) = lines.next_if(|l| l.is_empty() || l.starts_with('#')) {
        header.push(line);
    }
    let body = lines.map(|l| format!("{l}\n")).collect();
    (header, body)
}

/// The query on a header's `#>` lines.
fn query_of(header: &[&str]) -> Option<String> {
    let lines: Vec<&str> = header
        .iter()
        .filter_map(|l| l.strip_prefix("#>"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The names (first words) of a file's entry lines.
fn entries(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// One line a name, sorted by bytes.
fn names(rows: &[Vec<String>]) -> Result<Vec<String>, String> {
    let mut names = BTreeSet::new();
    for row in rows {
        let name = row.first().ok_or("a row without columns")?;
        check_name(name)?;
        names.insert(name.clone());
    }
    Ok(names.into_iter().collect())
}

/// One line a keyword (`word category tags`), sorted by bytes: the server's
/// keywords with the tags the file gives them, and the file's keywords of
/// later releases. Other words of the file are dropped.
fn keywords(
    rows: &[Vec<String>],
    body: &str,
    major: u32,
    file: &str,
) -> Result<Vec<String>, String> {
    let old: BTreeMap<&str, Vec<&str>> = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut columns = l.split_whitespace();
            Some((columns.next()?, columns.collect()))
        })
        .collect();
    let mut lines = BTreeMap::new();
    for row in rows {
        let [word, category] = row.as_slice() else {
            return Err(format!(
                "{file}: the query must return a word and a category"
            ));
        };
        check_name(word).map_err(|error| format!("{file}: {error}"))?;
        let tags = old
            .get(word.as_str())
            .map_or(&[][..], |c| c.get(1..).unwrap_or_default());
        lines.insert(word.clone(), line(word, category, tags));
    }
    for (word, columns) in &old {
        if lines.contains_key(*word) {
            continue;
        }
        let later = columns.iter().any(|tag| {
            tag.strip_prefix("since=")
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|since| since > major)
        });
        if later {
            let category = columns.first().copied().unwrap_or_default();
            lines.insert(
                (*word).to_owned(),
                line(word, category, columns.get(1..).unwrap_or_default()),
            );
        }
    }
    Ok(lines.into_values().collect())
}

/// A line of `keywords.txt`.
fn line(word: &str, category: &str, tags: &[&str]) -> String {
    let mut line = format!("{word:<17} {category}");
    for tag in tags {
        line.push(' ');
        line.push_str(tag);
    }
    line
}

/// Checks that a name is lowercase ASCII letters, digits and `_`, as the
/// build script requires.
fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not lowercase ASCII letters, digits and `_`; the classifier's tables \
             cannot hold it"
        ))
    }
}

/// The file's new text: its header, with the server's major version, and one
/// line an entry.
fn render(header: &[&str], lines: &[String], major: u32) -> String {
    let mut text = String::new();
    for line in header {
        match line.strip_prefix(GENERATED_FROM) {
            Some(rest) => {
                let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
                text.push_str(&format!("{GENERATED_FROM}{major}{rest}\n"));
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Prints how many entries a file has, and which names come and go.
fn report(file: &str, old: &[String], new: &[String]) {
    let old: BTreeSet<&str> = old.iter().map(String::as_str).collect();
    let new_names: BTreeSet<&str> = new
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let added: Vec<&str> = new_names.difference(&old).copied().collect();
    let removed: Vec<&str> = old.difference(&new_names).copied().collect();
    println!(
        "{file}: {} entries, {} added, {} removed",
        new_names.len(),
        added.len(),
        removed.len()
    );
    for (sign, names) in [("+", added), ("-", removed)] {
        if !names.is_empty() {
            println!("  {sign} {}", names.join(" "));
        }
    }
}
