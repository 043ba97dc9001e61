//! `bulkimport check FILE --definition DEF`: the whole parse and validation
//! on this machine, no AWS: what to run before uploading.

use bulk_import::check::{check, BytesRead, CheckReport, Keep, RepeatedKeys};
use bulk_import::schema::OnDuplicateKey;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::time::{Duration, Instant};

/// Checks `file`; prints the summary, the failures by reason, the first
/// failed rows and the rows repeating a key. Exit code: 0 every row valid,
/// 2 some rows failed, 1 a file-level problem (not text, a bad header, a
/// limit). Repeated keys are not failures: they change the exit code only
/// through the rows that fail.
pub async fn run(file: &Path, definition: &Path, keep: Keep) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(definition)
        .map_err(|e| anyhow::anyhow!("{}: {e}", definition.display()))?;
    let origin = definition.display().to_string();
    let definition = bulk_import::Definition::from_json(&text, &origin)?;
    // The definition's own cap, as the functions would refuse it (the
    // deployment's default is not known here).
    bulk_import::throttle::check_cap(&definition, 0, &origin)?;
    let name = file.display().to_string();
    let input = tokio::fs::File::open(file)
        .await
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let size = input.metadata().await?.len();
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
            .expect("valid template"),
    );
    let read = BytesRead::default();
    let ticker = {
        let (bar, read) = (bar.clone(), read.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(read.get());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    let input = tokio::io::BufReader::with_capacity(1 << 20, input);
    let outcome = check(input, &name, &definition, keep, &read).await;
    ticker.abort();
    bar.finish_and_clear();
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            eprintln!("{e}");
            return Ok(1);
        }
    };
    let policy = definition.duplicate_policy();
    print(&name, &report, policy, started.elapsed()).await?;
    Ok(if report.failed == 0 { 0 } else { 2 })
}

async fn print(
    name: &str,
    r: &CheckReport,
    policy: OnDuplicateKey,
    took: Duration,
) -> anyhow::Result<()> {
    let secs = took.as_secs_f64().max(1e-9);
    println!(
        "{name}: {} rows, {} valid, {} failed ({:.1} s, {:.1} MB/s, {:.0} rows/s)",
        r.rows,
        r.valid,
        r.failed,
        secs,
        r.bytes as f64 / secs / 1e6,
        r.rows as f64 / secs
    );
    if let Some(repeated) = &r.repeated {
        print_repeated(repeated, policy);
    }
    if r.by_reason.is_empty() {
        return Ok(());
    }
    println!("failed by reason:");
    let mut reasons: Vec<_> = r.by_reason.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (reason, count) in reasons {
        println!("{count:>10}  {reason}");
    }
    if r.first_errors.is_empty() {
        return Ok(());
    }
    println!("first {} failed rows:", r.first_errors.len());
    let mut out = csv_async::AsyncWriter::from_writer(tokio::io::stdout());
    out.write_record(["line", "field", "value", "message"])
        .await?;
    for failed in &r.first_errors {
        for issue in &failed.issues {
            out.write_record([
                failed.line.to_string().as_str(),
                issue.field.as_deref().unwrap_or_default(),
                issue.value.as_deref().unwrap_or_default(),
                &issue.message,
            ])
            .await?;
        }
    }
    out.flush().await?;
    Ok(())
}

/// The keys that valid rows repeat, and which row of each the target table
/// keeps under the definition's `onDuplicateKey`.
fn print_repeated(r: &RepeatedKeys, policy: OnDuplicateKey) {
    if r.rows == 0 {
        println!("keys ({}): every valid row has its own", r.field);
    } else {
        let kept = match policy {
            OnDuplicateKey::Last => "last: each key keeps its last row",
            OnDuplicateKey::First => "first: each key keeps its first row",
            OnDuplicateKey::Reject => "reject: each key keeps its first row, the later ones fail",
        };
        println!(
            "keys ({}): {} repeated, on {} after the first (onDuplicateKey {kept})",
            r.field,
            count(r.keys, "key", "keys"),
            count(r.rows, "valid row", "valid rows"),
        );
        for repeat in &r.first {
            println!(
                "{:>10}  line {} repeats the key of line {}",
                "", repeat.line, repeat.first_line
            );
        }
    }
    if let Some(line) = r.untracked_from {
        println!(
            "keys were remembered up to line {line} (--max-keys): rows from there on were not checked for repeats"
        );
    }
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
