//! Where prompts come from: `--prompt`, `--prompt-ids`, or a JSONL file.

use std::io::BufRead;

use airllm_core::{Error, Result};

use crate::cli::RunArgs;

/// One prompt as the user gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Text to tokenize.
    Text(String),
    /// Token ids as given.
    Ids(Vec<u32>),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    prompt: Option<String>,
    prompt_ids: Option<Vec<u32>>,
}

/// Token ids written as `1,2,3`.
pub fn parse_ids(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(|t| {
            t.trim()
                .parse()
                .map_err(|_| Error::Request(format!("--prompt-ids: `{t}` is not a token id")))
        })
        .collect()
}

fn parse_line(line: &str, number: usize, source: &str) -> Result<Prompt> {
    let bad = |detail: String| Error::Request(format!("{source} line {number}: {detail}"));
    let parsed: PromptLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
    match (parsed.prompt, parsed.prompt_ids) {
        (Some(text), None) => Ok(Prompt::Text(text)),
        (None, Some(ids)) => Ok(Prompt::Ids(ids)),
        _ => Err(bad(r#"give exactly one of "prompt" or "prompt_ids""#.into())),
    }
}

/// Collects the prompts in order: `--prompt`s, `--prompt-ids`, then the file.
pub fn collect(args: &RunArgs) -> Result<Vec<Prompt>> {
    let mut prompts: Vec<Prompt> = args.prompt.iter().cloned().map(Prompt::Text).collect();
    for ids in &args.prompt_ids {
        prompts.push(Prompt::Ids(parse_ids(ids)?));
    }
    if let Some(path) = &args.prompts {
        let source = path.display().to_string();
        let reader: Box<dyn BufRead> = if source == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            Box::new(std::io::BufReader::new(file))
        };
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| Error::io(path, e))?;
            if !line.trim().is_empty() {
                prompts.push(parse_line(&line, i + 1, &source)?);
            }
        }
    }
    if prompts.is_empty() {
        return Err(Error::Request(
            "no prompt: give --prompt TEXT, --prompt-ids 1,2,3 or --prompts FILE".into(),
        ));
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_ids() {
        assert_eq!(parse_ids("1, 504,3575").unwrap(), vec![1, 504, 3575]);
        assert!(parse_ids("1,x").is_err());
        assert_eq!(
            parse_line(r#"{"prompt": "hi"}"#, 1, "f").unwrap(),
            Prompt::Text("hi".into())
        );
        assert_eq!(
            parse_line(r#"{"prompt_ids": [4, 5]}"#, 1, "f").unwrap(),
            Prompt::Ids(vec![4, 5])
        );
        let err = parse_line(r#"{"prompt": "a", "prompt_ids": [1]}"#, 3, "f").unwrap_err();
        assert!(err.to_string().contains("line 3"));
    }
}
