fn main() {} // placeholder until the perf helper writes this bench
