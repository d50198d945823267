"""AI feedback: Constitutional AI (Bai et al. 2022), RLAIF preference labels (Lee et al. 2023) and LLM-as-judge
(Zheng et al. 2023).

- `constitution`  the constitution file: principles with critique and revision requests, the judging prompts
- `judges`        one judge interface (`compare`, `score`) with position-swap debiasing; the world's rule-based
                  judge and a local Hugging Face causal LM judge
- `http_judge`    an OpenAI-compatible HTTP judge: timeouts, retries with backoff, rate limit, on-disk cache
- `label`         `rlhfkit cai label`: preference rows from a judge, in the labelling app's export format
- `revise`        `rlhfkit cai revise`: critique and revise responses into SFT data (SL-CAI)
- `agreement`     `rlhfkit cai agreement`: a judge's labels against human and gold labels
"""
