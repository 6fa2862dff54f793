fn main() {
    println!("app: the main binary");
    for line in app::report() {
        println!("{line}");
    }
}
