fn main() {
    std::process::exit(clusterctl::commands::main());
}
