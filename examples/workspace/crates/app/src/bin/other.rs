//! Checksums its arguments (or "cargo" and "farm" without any) with the C library.

fn main() {
    let mut words: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if words.is_empty() {
        words = vec!["cargo".into(), "farm".into()];
    }
    println!("other: {}", shout::shout!("the second binary"));
    for word in &words {
        println!("{word} -> {:08x}", native::checksum(word.as_bytes()));
    }
}
