//! Chat templates render as transformers' `apply_chat_template` renders
//! them: a template with the constructs Qwen3's uses (a namespace, a loop
//! over the messages reversed, `tool_calls` with `tojson` arguments, tools,
//! `enable_thinking` passed as a template variable), against transformers'
//! renderings (`fixtures/generate_qwen3.py`).

use airllm_formats::ChatTemplate;
use airllm_tests::fixtures_dir;
use serde_json::Value;

#[derive(serde::Deserialize)]
struct Case {
    messages: Vec<Value>,
    #[serde(default)]
    tools: Option<Value>,
    options: serde_json::Map<String, Value>,
    text: String,
}

#[test]
fn a_qwen3_style_template_renders_as_transformers_does() {
    let dir = fixtures_dir().join("chat");
    let source = std::fs::read_to_string(dir.join("qwen3-style.jinja")).unwrap();
    let cases: Vec<Case> =
        serde_json::from_slice(&std::fs::read(dir.join("qwen3-style.json")).unwrap()).unwrap();
    for case in cases {
        let mut variables = case.options.clone();
        if let Some(tools) = case.tools {
            variables.insert("tools".into(), tools);
        }
        let template = ChatTemplate::new(source.clone(), String::new(), String::new())
            .unwrap()
            .with_variables(variables);
        let text = template.render(&case.messages, true).unwrap();
        assert_eq!(text, case.text, "{:?}", case.options);
    }
}
