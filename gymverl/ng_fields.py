"""Which top-level rollout fields NeMo Gym's verifiers take as input and which they only write.

A fallback for when nothing authoritative says which fields of a rollout line are task fields (no
tasks file, no `<stem>_materialized_inputs.jsonl`, no server schema; see `gymverl.formats.FieldRules`).
Both tables are the field names declared by the pydantic models of every resources server in
NeMo Gym 0.7.0 (`resources_servers/*/` and `nemo_gym/base_resources_server.py`):
`REQUEST_FIELDS` by a `/verify` request model (subclasses of `BaseRunRequest`/`BaseVerifyRequest`,
e.g. `verifier_metadata`, `expected_answer`, `options`), `RESPONSE_ONLY_FIELDS` by a response
model only (subclasses of `BaseVerifyResponse`, e.g. `extracted_answer`, `base_status`,
`expected_weather`). A name in both is a request field of some server, so it is in
`REQUEST_FIELDS` only. NeMo Gym's own bookkeeping (`reward`, `mask_sample`, `reward_components`,
...) is in neither. Regenerate with
`python -m gymverl.ng_fields <site-packages of a NeMo Gym venv>` (prints this module's tables).
"""

from __future__ import annotations

import ast
import functools
import os
import re
import sys
from pathlib import Path

_REQUEST_BASES = ("BaseVerifyRequest", "BaseRunRequest")
_RESPONSE_BASES = ("BaseVerifyResponse", "BaseMultiRewardVerifyResponse")
_BOOKKEEPING = frozenset(
    {"responses_create_params", "response", "reward", "capture_rollout_id", "mask_sample", "failure_kind", "failure_reason", "reward_components"}
)


def _server_sources(under: Path) -> list[Path]:
    """The servers' own .py files below `under`: not their tests, and not what lives in hidden or
    vendored folders (NeMo Gym 0.4 builds each server's uv venv in `<server>/.venv`: ~19,000 files
    of third-party code that would take ~40 s to parse and declare no verifier model)."""
    out: list[Path] = []
    for folder, dirs, names in os.walk(under):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _NOT_SERVER_CODE)
        out += [Path(folder) / n for n in sorted(names) if n.endswith(".py")]
    return out


_NOT_SERVER_CODE = frozenset({"tests", "site-packages", "node_modules", "__pycache__"})


@functools.lru_cache(maxsize=256)
def _classes(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]:
    """The top-level classes of a Python file: (name, base names, annotated field names) each, read
    with `ast`, nothing imported; () when it cannot be read. Cached by (path, mtime, size): every
    server's scan reads NeMo Gym's base models, and parsing was most of `to-parquet --format rl`'s
    fixed cost. A file with no line starting with `class` is not parsed: a top-level class
    statement can start nowhere else (servers' data-preparation scripts have none)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return ()
    if not re.search(r"^class\b", text, re.M):
        return ()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return ()
    return tuple(
        (
            node.name,
            tuple(b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases),
            tuple(n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)),
        )
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    )


def scan(site_packages: str | Path, server: str | None = None) -> tuple[set[str], set[str]]:
    """(request fields, response-only fields) declared by the resources servers under `site_packages`,
    or by resources server `server` alone (its folder and NeMo Gym's base models; read with `ast`,
    nothing imported). A base class is looked up in its own file first, then by name."""
    root = Path(site_packages)
    # (file, class name) -> [base names], [annotated field names]; bases resolve in their own file first.
    local: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    by_name: dict[str, list[tuple[str, str]]] = {}
    under = root / "resources_servers" / server if server else root / "resources_servers"
    files = _server_sources(under)
    for path in [*files, root / "nemo_gym" / "base_resources_server.py"]:
        try:
            st = path.stat()
            classes = _classes(str(path), st.st_mtime_ns, st.st_size)
        except OSError:
            continue
        for name, bases, names in classes:
            local[(str(path), name)] = (list(bases), list(names))
            by_name.setdefault(name, []).append((str(path), name))

    def resolve(name: str, file: str) -> list[tuple[str, str]]:
        return [(file, name)] if (file, name) in local else by_name.get(name, [])

    def kind(key: tuple[str, str], seen: tuple[tuple[str, str], ...] = ()) -> str | None:
        if key[1] in _RESPONSE_BASES or key[1].endswith("VerifyResponse"):  # some extend a request + a result model
            return "response"
        if key[1] in _REQUEST_BASES:
            return "request"
        if key in seen or key not in local:
            return None
        kinds = {kind(k, (*seen, key)) for b in local[key][0] if b for k in resolve(b, key[0])}
        return "response" if "response" in kinds else "request" if "request" in kinds else None

    def fields(key: tuple[str, str], seen: tuple[tuple[str, str], ...] = ()) -> set[str]:
        if key in seen or key not in local:
            return set()
        bases, out = local[key][0], set(local[key][1])
        for b in bases:
            for k in resolve(b, key[0]):
                out |= fields(k, (*seen, key))
        return out

    request: set[str] = set()
    response: set[str] = set()
    for key in local:
        k = kind(key)
        if k == "request":
            request |= fields(key)
        elif k == "response":
            response |= fields(key)
    request -= _BOOKKEEPING
    return request, response - request - _BOOKKEEPING


def server_request_fields(server: str, env: str | Path | None = None) -> frozenset[str] | None:
    """The task fields the `/verify` request model of NeMo Gym resources server `server` (e.g. mcqa:
    options, expected_answer, grading_mode, ...) declares in the installed NeMo Gym (`env`, else
    `gymverl.nemo_gym.find_env`'s venv), NeMo Gym's bookkeeping left out: what `gymverl rescore`
    reads from a running server's `/openapi.json`, for callers with no server (`to-parquet`). None
    when no NeMo Gym venv is found or it has no such server. Declared is not required: a verifier
    may do without some of them (mcqa's uuid)."""
    from gymverl.nemo_gym import NemoGymError, find_env, package_dir

    try:
        root = package_dir(find_env(env))
    except NemoGymError:
        return None
    if not server or "/" in server or not (root / "resources_servers" / server).is_dir():
        return None
    return frozenset(scan(root, server)[0])


def _table(name: str, items: set[str]) -> str:
    import textwrap

    body = textwrap.fill(
        ", ".join(f'"{x}"' for x in sorted(items)) + ",", width=110, initial_indent="        ",
        subsequent_indent="        ", break_long_words=False, break_on_hyphens=False,
    )
    return f"{name} = frozenset(\n    {{\n{body}\n    }}\n)\n"


# ---- generated from NeMo Gym 0.7.0 by `python -m gymverl.ng_fields` --------------------------------

REQUEST_FIELDS = frozenset(
    {
        "FAIL_TO_PASS", "PASS_TO_PASS", "aa_lcr_dataset_revision", "aa_lcr_judge_protocol", "aa_lcr_version",
        "adversarial_prompt", "agent_mode", "agent_started", "agent_timings", "answer", "answer_format",
        "answer_type", "app", "artifact", "artifact_directory", "artifact_id", "artifact_path", "asset_dirs",
        "attack_type", "audio_duration", "author", "base_commit", "base_dockerfile", "baseline_answer",
        "baseline_model", "bct_field", "bct_subfield", "before_repo_set_cmd", "benchmark_name", "breadth",
        "bunsen_id", "case_sensitive", "category", "choices", "circles", "cleaned_phenotype",
        "client_session_id", "competition_id", "condition_cols", "config_json", "context", "contrast_prompt",
        "correct_index", "created_at", "data_source_filenames", "data_source_urls", "dataset_name",
        "dataset_ref", "dataset_split", "db_id", "declared_tools", "deliverables_dir", "delivery", "depth",
        "difficulty", "dimension", "distractor_style", "doc_id", "docker_image", "dockerhub_tag", "document",
        "document_category", "document_set_id", "domain", "environment_name", "environment_setup_commit",
        "eval_type", "evaluation", "example_id", "exp_cal_state", "expected_action", "expected_answer",
        "expected_answers", "expected_call", "expected_code_contains", "expected_count",
        "expected_coverage_percent", "expected_final_stage_index", "expected_judgement", "expected_output",
        "expected_output_json", "expected_result", "expected_stage_row_count", "expected_synonym_values",
        "expected_synonyms", "expected_values", "extraction_mode", "f2p_patch", "f2p_script", "fail_to_pass",
        "failed_ptp", "formal_statement", "github_url", "gold_answer", "gold_result", "gold_sql", "grade_py",
        "grading_id", "grading_mode", "ground_truth", "ground_truth_judgement", "ground_truth_overall",
        "ground_truth_rubric_scores", "ground_truth_verify_score", "group_attempt", "group_id", "gt_sql",
        "harness", "harness_metadata", "has_distractors", "header", "hints_text", "id", "ignore_order",
        "image", "image_digest", "image_name", "image_ref", "image_url", "import_names", "informal_prefix",
        "injection", "input_tokens", "input_tokens_band", "input_type", "install_config", "instance",
        "instance_dockerfile", "instance_id", "instruction", "instruction_detail_level",
        "instruction_id_list", "instruction_layout", "instructions", "interface", "is_halu",
        "is_lmarena_v2_prompt", "issue_categories", "issue_specificity", "judge_prompt_template",
        "judge_system_prompt", "kwargs", "language", "length", "level", "llm_judge", "match", "match_type",
        "max_dist", "metadata", "minefield_label", "minefield_label_value", "mode", "n_needles", "n_tokens",
        "name", "ng_attempt_index", "ng_rollout_index", "ng_task_index", "noise_level", "num_distractors",
        "num_genes", "num_tools", "num_turns", "occupation", "options", "original_problem", "output_regex",
        "output_type", "outputs", "parallel_tool_calls", "parser_script", "partial_similarity",
        "pass_to_pass", "passed_ptp", "patch", "prd_files", "pre_commands", "principle", "problem",
        "problem_category", "problem_id", "problem_statement", "problem_type", "prompt", "prompt_chars",
        "prompt_id", "prompt_slices", "proof", "proof_1", "proof_2", "pypi_name", "query", "question",
        "question_id", "random_string_to_prepend", "raw_output_metric", "reference", "reference_fields",
        "reference_file_urls", "reference_ids", "reference_response", "reference_solution", "relevance_genes",
        "relevance_scores", "rendering", "repo", "repo_language", "required_tools", "requirements",
        "response_mode", "rollout_id", "rollout_index", "rtl_files", "rubric", "rubric_json", "rubric_pretty",
        "rubrics_file", "run_script", "safe_prompt", "sample_id", "sandbox_handle", "schema_repr",
        "schema_str", "schema_type", "score_1", "score_2", "screen_category", "sector",
        "selected_test_files_to_run", "self_comparison", "session_id", "setting", "solution", "solutions",
        "source", "source_format", "source_id", "source_lang_name", "source_language", "source_record_id",
        "source_schema_type", "split", "sql", "sql_context", "sql_dialect", "sql_prompt", "stage_index",
        "style_reference_token_count", "sub_steps", "subject", "subset", "subtask", "subtask_score", "system",
        "system_instruction_style", "target", "target_color", "target_lang_name", "target_language",
        "target_len", "task", "task_difficulty_qwen3_32b_avg_8", "task_dir", "task_folder", "task_id",
        "task_index", "task_name", "task_ref", "task_type", "template_metadata", "termination",
        "test_assets_dir", "test_binary_archive_b64", "test_command", "test_framework", "test_input",
        "test_patch", "test_plans", "test_sh", "text", "threshold", "tool_choice", "tool_name",
        "tool_name_style", "tool_payload_key", "tool_schema_mode", "tool_union_mode", "topic", "train",
        "translation", "turn_index", "uid", "use_box_format", "uuid", "verifier", "verifier_metadata",
        "verifier_type", "verify_cache_namespace", "version", "weight", "workdir",
    }
)

RESPONSE_ONLY_FIELDS = frozenset(
    {
        "abs_error", "abstention", "acceptance_length", "acceptance_rate", "accepted_tokens", "accuracy",
        "aggregation_mode", "all_pass", "answer_em", "answer_f1", "answer_judge_evaluation",
        "answer_judgment", "answer_score", "any_checkpoint_correct", "any_correct", "apply_failed",
        "argument_detail", "argument_score", "artifact_extraction_time_s", "artifacts", "attack_category",
        "attack_difficulty", "attack_strategy", "avg_tool_call_time_seconds", "base_status", "binary_match",
        "bleu_score", "build_failed", "by_dimension", "by_type", "case_id", "case_set", "char_rate",
        "checkpoint_accuracy", "checkpoints_correct", "checkpoints_total", "cleaned_response", "clicked_x",
        "clicked_y", "comet_qe", "comet_score", "compiler_output", "completion", "complied",
        "container_exit_code", "container_services", "container_stderr", "correct", "correct_with_extraneous",
        "correction_prompt", "correctness", "criterion_evaluations", "cwe", "delegated_response",
        "dependency_graph", "details", "diff_size_penalty", "distance", "draft_tokens", "dspy_parse_failed",
        "empty_policy_response", "empty_response", "endpoint", "equivalence_score", "error", "error_feedback",
        "error_message", "error_mode", "error_type", "eval_function", "eval_sandbox_start_time_taken",
        "eval_timed_out", "evaluation_completed", "evaluation_error", "evaluation_message", "exact",
        "exact_accuracy", "exact_match", "execution_match", "execution_time", "expected_tool_name",
        "expected_weather", "explanation_judge_evaluation", "explanation_judgment", "extracted",
        "extracted_answer", "extracted_final_answer", "extracted_grade", "extracted_judgement",
        "extracted_law", "extracted_model_code", "extracted_model_output", "extracted_rtl", "extracted_sql",
        "extracted_verdict", "extracted_x", "extracted_y", "extraction_successful", "f1", "f1_by_item",
        "f1_by_row", "f2p", "f2p_passed", "f2p_total", "failure_labels", "final_response_mentions_weather",
        "final_response_text", "fn", "follow_all_instructions", "follow_all_instructions_loose",
        "follow_instruction_list", "follow_instruction_list_loose", "format", "format_correct", "fp",
        "fragment_f1", "fully_correct", "fully_incorrect", "fwe", "games", "gen_seconds",
        "generated_response", "generation", "golden_patch_output", "grading_time_s", "gt_remove_reason",
        "gt_should_remove", "gt_steps", "had_codeblock", "hallucination_rate", "hit", "hyp_c", "hyp_pc_tok",
        "image_provenance", "infrastructure_error", "injection_followed", "instance_config",
        "invalid_base_gen", "invalid_gen_base", "invalid_judge_response", "invalid_judge_retryable",
        "invalid_model_response", "is_abstain", "is_correct", "is_correct_plus", "is_correct_strict",
        "is_hallucination", "is_incorrect", "is_not_attempted", "is_partial", "is_refusal", "is_safe",
        "isr_counted", "isr_pass", "judge_correct", "judge_diagnostics", "judge_error", "judge_error_detail",
        "judge_evaluation", "judge_evaluations", "judge_generation_error", "judge_label", "judge_model",
        "judge_output", "judge_passed", "judge_points", "judge_rating", "judge_raw", "judge_response",
        "judge_response_create_params", "judge_responses_create_params",
        "judge_skipped_for_transfer_mismatch", "judge_text", "judged_response_text", "judgement_base_gen",
        "judgement_gen_base", "key_validation_score", "label", "lang_fidelity", "language_consistency_score",
        "law_version", "levenshtein", "library_reward", "log_dir", "loss", "match_details", "matched_args",
        "matched_tool", "max_score", "mean_criterion_pass", "mean_test_execution_time_s", "metrics",
        "misaligned_seg", "model_output", "model_patch", "model_patch_bytes", "model_patch_sha256",
        "model_response_text", "n_error", "n_false", "n_fragments_predicted", "n_null", "n_skipped", "n_true",
        "needs_correction", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3", "niah_multiquery",
        "niah_multivalue", "niah_single_1", "niah_single_2", "niah_single_3", "no_answer", "no_judge_score",
        "num_agent_failures", "num_agent_messages", "num_correct", "num_criteria", "num_criteria_passed",
        "num_drafts", "num_expected", "num_generated_tokens", "num_passed", "num_predicted",
        "num_provider_429s", "num_provider_other_retries", "num_rollout_tool_calls", "num_steps_passed",
        "num_steps_total", "num_tests_run", "num_tool_calls", "num_tool_failures", "num_tool_results",
        "num_tool_schema_failures", "num_total", "num_user_failures", "num_user_messages",
        "omniscience_index", "order_instruction_following_failure", "original_term_minefield_hit",
        "osworld_score", "outside_policy_scope", "overall_ranking_binary_acc", "overall_ranking_l1",
        "overall_score_1_l1", "overall_score_2_l1", "p2p", "p2p_passed", "p2p_total", "parse_fail",
        "parse_failed", "parsed", "parsed_option", "parsed_output", "parsed_synonym_values", "partial",
        "passed", "passed_count", "patch_applied", "patch_branch", "patch_collection_time_s", "patch_commits",
        "patch_source", "patch_verification_time_taken", "per", "per_position_acceptance_rates",
        "per_reference", "phenotype_group", "plus_status", "policy_answer", "policy_reasoning", "precision",
        "precision_by_item", "precision_by_row", "pred_halu", "pred_length", "pred_text", "predicted_answer",
        "predicted_calls", "predicted_count", "predicted_genes", "predicted_label", "predicted_nodes",
        "predicted_output", "predicted_proof", "predicted_ranking", "predicted_score_1", "predicted_score_2",
        "predicted_value", "prefix_matched", "problem_accuracy", "prompt_type", "proof_status", "qa_1",
        "qa_2", "quality_judge_evaluation", "query_id", "question_type", "raw_output_score", "reasoning",
        "reasoning_format_violation_rate", "reasoning_overlap", "reasoning_text", "recall", "recall_by_item",
        "recall_by_row", "ref_c", "ref_pc_tok", "render_score", "repro_test_info_base64", "reset_count",
        "resolved", "resolved_answer_type", "resolved_reward_rule", "response_policy", "response_safety",
        "response_text_mode", "result", "results", "reward_100k_110k", "reward_110k_128k", "reward_128k_plus",
        "reward_80k_100k", "reward_answer", "reward_disclaimer_presence_check", "reward_explanation_quality",
        "reward_hard_refusal_check", "reward_helpline_presence_check", "reward_loose", "reward_lt_80k",
        "reward_overrefusal_check", "reward_quality", "reward_safety", "reward_utility", "rmsle",
        "rollout_tool_name", "rouge_score", "row_id", "rubric_all_pass", "rubric_dealbreakers_failed",
        "rubric_dealbreakers_total", "rubric_evaluations", "rubric_fraction", "rubric_judgements",
        "rubric_partial_credit", "rubric_passed", "rubric_ranking_l1", "rubric_score", "rubric_score_l1",
        "rubric_score_normalized", "rubric_total", "rubric_unresolved", "rubric_weight_passed",
        "rubric_weight_total", "rubric_weighted_fraction", "rubrics", "safety_categories",
        "sandbox_start_time_s", "schema_check_passed", "schema_valid", "score", "score_diff",
        "seeding_failure_rate", "segale_error", "sentence_chrf", "sentence_spbleu", "seq_match_ratio",
        "set_overlap", "similarity_score", "spans", "spec_decode_unavailable", "status", "step_results",
        "step_usage", "string_similarity_passed", "subtask_accuracy", "symbolic_correct",
        "symbolic_equivalent", "tanimoto_maccs", "tanimoto_morgan", "tanimoto_rdk", "target_match",
        "task_complete_check_passed", "terminal_state", "test_output", "test_patch_failed",
        "test_plans_graded", "test_plans_total", "test_results", "thinking_incomplete", "tie", "timeout_rate",
        "timings", "tn", "token_usage_version", "tool_call_seen", "tool_family", "tool_name_match",
        "tool_request_timeout_count", "tool_timeout_count", "total_count", "total_losses", "total_seg",
        "total_test_execution_time_s", "total_ties", "total_tool_execution_time_seconds", "total_wins", "tp",
        "trajectory_invalid_reasons", "transfer_ground_truth_enforced", "transfer_ground_truth_mismatch",
        "transferred", "truncated", "turn_id", "unit_tests_time_taken", "user_safety", "validation_results",
        "validity", "verdict", "verdict_base_gen", "verdict_gen_base", "verification_result",
        "verification_time", "verification_time_s", "verification_time_taken", "verification_type",
        "verifier_error", "verifier_exit_code", "verifier_labels", "verifier_rewards",
        "verifier_sandbox_observation", "verify_mode", "vt", "wer", "wer_c", "wer_pc", "win",
        "worktree_dirty",
    }
)


if __name__ == "__main__":  # pragma: no cover - a maintenance tool
    req, resp = scan(sys.argv[1])
    print(_table("REQUEST_FIELDS", req))
    print(_table("RESPONSE_ONLY_FIELDS", resp))
