//! Parses arguments with clap (all have defaults), extracts numbers with a regex, squares them on
//! tokio tasks, and prints a derived struct as JSON along with its syn-generated description.

use clap::Parser;
use describe_macro::Describe;
use regex::Regex;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(name = "crates-io-demo", version, about)]
struct Args {
    /// Who the report is for.
    #[arg(long, default_value = "farm")]
    name: String,
    /// Text whose integers are squared, one tokio task each.
    #[arg(long, default_value = "built 12 crates in 3 steps on 2 cores")]
    text: String,
    /// At most this many numbers are used.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    limit: u32,
}

#[derive(Serialize, Describe)]
struct Report {
    name: String,
    numbers: Vec<u64>,
    squares: Vec<u64>,
    total: u64,
}

/// The integers in `text` (ones too large for u64 are skipped), at most `limit` of them.
fn numbers(text: &str, limit: u32) -> Vec<u64> {
    let re = Regex::new(r"\b\d+\b").expect("a valid constant regex");
    re.find_iter(text)
        .filter_map(|m| m.as_str().parse().ok())
        .take(limit as usize)
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let numbers = numbers(&args.text, args.limit);
    let handles: Vec<_> = numbers
        .iter()
        .map(|&n| tokio::spawn(async move { n.saturating_mul(n) }))
        .collect();
    let mut squares = Vec::with_capacity(handles.len());
    for handle in handles {
        squares.push(handle.await?);
    }
    let total = squares.iter().fold(0u64, |a, &b| a.saturating_add(b));
    let report = Report {
        name: args.name,
        numbers,
        squares,
        total,
    };
    println!(
        "describe: {} ({} fields)",
        Report::describe(),
        Report::FIELD_COUNT
    );
    println!("json: {}", serde_json::to_string(&report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn extracts_whole_numbers() {
        assert_eq!(
            super::numbers("a1 22 b 333 4.5 99999999999999999999999", 8),
            [22, 333, 4, 5]
        );
        assert_eq!(super::numbers("1 2 3", 2), [1, 2]);
    }
}
