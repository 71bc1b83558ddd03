fn main() {
    std::process::exit(o3::cli::main());
}
