//! Examples get dev-dependencies, so toggles has `extra` here.

fn main() {
    println!(
        "demo: toggles=[{}] {}",
        toggles::enabled().join(","),
        toggles::decorate("demo")
    );
    println!("demo: {}", app::report()[4]);
}
