//! Every method on the seed's t1 request (list baselines), with exact and with sampled
//! baselines, on SmolLM2: `cargo bench --bench attribution [-- REPEATS]`.

use llm_attr::cli::{bench_rows, bench_table, parse_methods, read_request};
use llm_attr::model::LoadOptions;
use llm_attr::model::Model;

fn main() -> anyhow::Result<()> {
    let repeats = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3);
    let model = Model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf", &LoadOptions::default())?;
    let methods = parse_methods("fa,sv,svs,lime,kernel")?;
    for file in ["examples/t1.json", "examples/t1_sample.json"] {
        let request = read_request(file)?;
        println!("{file} ({repeats} runs per method)");
        print!(
            "{}",
            bench_table(&bench_rows(model.as_ref(), &request, &methods, repeats)?)
        );
    }
    Ok(())
}
