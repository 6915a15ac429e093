#!/usr/bin/env python3
"""Side-by-side CPU runtime comparison of one encoder (all-MiniLM-L6-v2):
PyTorch fp32, ONNX Runtime fp32 and int8 (dynamic quantization), casetag fp32
and int8. Run it through scripts/compare_runtimes.sh, which pins the Python
packages and builds the casetag helper (crates/transformer/examples/
runtime_bench.rs); `--help` lists the flags.

What it measures, with the same thread count for every runtime:
  * latency at 1x16 and 1x64 tokens (median of --runs runs after warm-up),
  * throughput at 32x64 and 32x128 tokens (sequences/s from the median of
    --tp-runs runs),
  * end-to-end tagging of the aftersales test cases and the BANKING77 test
    queries: tokenize (max 128 tokens, head truncation) + encode + mean pool +
    one seeded random linear head + argmax (sequences/s from the median of
    --e2e-runs runs over the whole set).
Before timing anything it checks that the tokenizers agree with casetag's
and that the fp32 runtimes' mean-pooled embeddings agree with casetag fp32
(cosine >= 0.9999); it stops with an error if not.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIN_COSINE = 0.9999
LATENCY_SHAPES = [(1, 16), (1, 64)]
THROUGHPUT_SHAPES = [(32, 64), (32, 128)]
WARMUP_BATCHES = 4  # e2e warm-up: the first 4 batches of 32 (as runtime_bench.rs)
EXPECTED_ROWS = {"aftersales": 1197, "banking77": 3080}
RUNTIMES = ["torch_fp32", "ort_fp32", "ort_int8", "casetag_fp32", "casetag_int8"]
LABELS = {
    "torch_fp32": "PyTorch fp32",
    "ort_fp32": "ORT fp32",
    "ort_int8": "ORT int8",
    "casetag_fp32": "casetag fp32",
    "casetag_int8": "casetag int8",
}


def die(msg: str) -> None:
    print(f"compare_runtimes: error: {msg}", file=sys.stderr)
    sys.exit(1)


def note(msg: str) -> None:
    print(f"compare_runtimes: {msg}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Compare PyTorch, ONNX Runtime and casetag on all-MiniLM-L6-v2 (CPU).")
    p.add_argument("--encoder", default=str(ROOT / "models/encoders/all-MiniLM-L6-v2"),
                   help="Hugging Face encoder directory (default: %(default)s)")
    p.add_argument("--bench-bin", default=str(ROOT / "target/release/examples/runtime_bench"),
                   help="the casetag helper binary (default: %(default)s)")
    p.add_argument("--out", default=str(ROOT / "out/compare_runtimes"),
                   help="output directory for results.json and the ONNX models (default: %(default)s)")
    p.add_argument("--aftersales", default=str(ROOT / "data/aftersales/test.csv"),
                   help="aftersales test CSV with a 'text' column (default: %(default)s)")
    p.add_argument("--banking77", default=str(ROOT.parent / "shared/data/banking77/test.csv"),
                   help="BANKING77 test CSV with a 'text' column (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime (default: 2)")
    p.add_argument("--runs", type=int, default=50,
                   help="timed runs per latency shape, at least 30 (default: 50)")
    p.add_argument("--tp-runs", type=int, default=7,
                   help="timed runs per throughput shape (default: 7)")
    p.add_argument("--e2e-runs", type=int, default=3,
                   help="timed end-to-end runs per dataset (default: 3)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds over all runtimes; each shape's and data set's runs are split "
                        "between them and pooled, so that a burst of load from other "
                        "processes falls on every runtime alike (default: 3)")
    p.add_argument("--warmup", type=int, default=5,
                   help="untimed runs before each latency/throughput shape (default: 5)")
    p.add_argument("--seed", type=int, default=42, help="seed of the token ids and the head")
    p.add_argument("--ort-optimizer", choices=["bert", "none"], default="bert",
                   help="'bert': run ORT's BERT graph optimizer (fused attention, "
                        "LayerNorm, GELU) before the fp32 session and before quantizing; "
                        "'none': the plain exported graph (default: %(default)s)")
    p.add_argument("--ort-int8-per-tensor", action="store_true",
                   help="quantize ORT int8 with quantize_dynamic's default per-tensor weight "
                        "scales (default: per output channel, as casetag's int8; same speed "
                        "here, far closer embeddings)")
    p.add_argument("--no-torch", action="store_true",
                   help="skip the PyTorch column (ONNX export still needs torch unless "
                        "the ONNX models are already in --out)")
    a = p.parse_args()
    if a.runs < 30:
        die(f"--runs {a.runs}: needs at least 30 timed runs for the latency medians")
    for name in ("threads", "tp_runs", "e2e_runs", "rounds"):
        if getattr(a, name) < 1:
            die(f"--{name.replace('_', '-')} must be >= 1")
    if a.warmup < 0:
        die("--warmup must be >= 0")
    return a


# ---------------------------------------------------------------- inputs


def read_texts(path: str, name: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "text" not in (reader.fieldnames or []):
                die(f"{path}: no 'text' column (columns: {reader.fieldnames})")
            texts = [row["text"] for row in reader]
    except OSError as e:
        die(f"{path}: {e.strerror or e}")
    want = EXPECTED_ROWS[name]
    if len(texts) != want:
        die(f"{path}: {len(texts)} rows, expected {want} ({name} test set)")
    return texts


def cpu_times() -> list[int] | None:
    """The aggregate `cpu` line of /proc/stat (user, nice, system, idle,
    iowait, irq, softirq, steal, ...), or None where there is none."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(start: list[int] | None, end: list[int] | None) -> float | None:
    """Steal time's share of all CPU time between two `cpu_times()`."""
    if not start or not end or len(start) < 8 or len(end) < 8:
        return None
    d = [b - a for a, b in zip(start, end)]
    return d[7] / sum(d) if sum(d) > 0 else None


def system_info(threads: int) -> dict:
    info: dict = {"python": platform.python_version(), "threads": threads}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        info["cpu_model"] = m.group(1).strip() if m else "?"
    except (OSError, subprocess.CalledProcessError) as e:
        info["cpu_model"] = f"? (lscpu failed: {e})"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    info["cpu_flags"] = {f: f in flags for f in
                         ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")}
    info["nproc"] = os.cpu_count()
    return info


# ---------------------------------------------------------------- tokenizer


class Tok:
    """The encoder's tokenizer.json through the `tokenizers` package: no
    padding, truncation to max_len with the [CLS] .. [SEP] frame kept (head
    truncation, as casetag's Truncation::Head)."""

    def __init__(self, encoder: Path, max_len: int):
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(str(encoder / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=max_len, strategy="longest_first",
                                   direction="right")
        self.cls = self.tok.token_to_id("[CLS]")
        self.sep = self.tok.token_to_id("[SEP]")

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=True)]


# ---------------------------------------------------------------- runtimes


def pad(batch: list[list[int]]):
    import numpy as np
    s = max(len(x) for x in batch)
    ids = np.zeros((len(batch), s), dtype=np.int64)
    mask = np.zeros((len(batch), s), dtype=np.int64)
    for i, x in enumerate(batch):
        ids[i, :len(x)] = x
        mask[i, :len(x)] = 1
    return ids, mask


class TorchRuntime:
    def __init__(self, encoder: Path, threads: int):
        import torch
        from transformers import BertModel
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set in this process
        self.torch = torch
        self.model = BertModel.from_pretrained(str(encoder), add_pooling_layer=False).eval()
        self.attn = getattr(self.model.config, "_attn_implementation", "?")

    def pooled(self, batch: list[list[int]]):
        import numpy as np
        torch = self.torch
        ids, mask = pad(batch)
        with torch.inference_mode():
            ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
            h = self.model(input_ids=ids_t, attention_mask=mask_t,
                           token_type_ids=torch.zeros_like(ids_t)).last_hidden_state
            m = mask_t.unsqueeze(-1).to(h.dtype)
            out = (h * m).sum(1) / m.sum(1)
        return np.asarray(out.numpy(), dtype=np.float32)


class OrtRuntime:
    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.sess.get_inputs()}

    def pooled(self, batch: list[list[int]]):
        import numpy as np
        ids, mask = pad(batch)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        h = self.sess.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
        m = mask[..., None].astype(np.float32)
        return ((h * m).sum(1) / m.sum(1)).astype(np.float32)


def export_onnx(encoder: Path, out: Path, optimizer: str,
                per_channel: bool) -> tuple[Path, Path, dict]:
    """fp32 and dynamically quantized int8 ONNX models of the encoder (cached
    in out/onnx, keyed by the encoder weights' size and mtime and the
    optimizer setting)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    d = out / "onnx"
    d.mkdir(parents=True, exist_ok=True)
    w = encoder / "model.safetensors"
    key = {"weights": str(w.resolve()), "size": w.stat().st_size, "mtime": w.stat().st_mtime,
           "optimizer": optimizer, "per_channel": per_channel,
           "onnxruntime": onnxruntime.__version__}
    fp32, int8 = d / "model_fp32.onnx", d / "model_int8.onnx"
    stamp = d / "stamp.json"
    meta_path = d / "export.json"
    if fp32.is_file() and int8.is_file() and stamp.is_file() and meta_path.is_file():
        if json.loads(stamp.read_text()) == key:
            note(f"reusing ONNX models in {d}")
            return fp32, int8, json.loads(meta_path.read_text())

    import torch
    from transformers import BertModel

    # Eager attention gives the plain MatMul/Softmax graph that ORT's BERT
    # fusion recognises (the PyTorch column runs transformers' default).
    model = BertModel.from_pretrained(str(encoder), add_pooling_layer=False,
                                      attn_implementation="eager").eval()

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]] * 2, dtype=torch.long)
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    raw = d / "model_raw.onnx"
    axes = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "token_type_ids")}
    axes["last_hidden_state"] = {0: "batch", 1: "seq"}
    exporter = "torch.onnx.export(dynamo=False), opset 17"
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            torch.onnx.export(Hidden(model), args, str(raw), dynamo=False, opset_version=17,
                              input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["last_hidden_state"], dynamic_axes=axes)
    except Exception as e:  # the TorchScript exporter may be gone in a future torch
        note(f"TorchScript ONNX export failed ({type(e).__name__}: {e}); trying dynamo=True")
        exporter = "torch.onnx.export(dynamo=True), opset 18"
        with torch.no_grad():
            torch.onnx.export(Hidden(model), args, str(raw), dynamo=True, opset_version=18,
                              input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["last_hidden_state"], dynamic_axes=axes,
                              external_data=False)
    onnx.checker.check_model(str(raw))
    note(f"exported {raw} in {time.perf_counter() - t0:.1f} s ({exporter})")

    src = raw
    fused: dict = {}
    if optimizer == "bert":
        from onnxruntime.transformers.optimizer import optimize_model
        cfg = model.config
        opt = optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads,
                             hidden_size=cfg.hidden_size, opt_level=1, use_gpu=False)
        fused = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(str(fp32))
        note(f"ORT BERT optimizer: fused {fused}")
        src = fp32
    else:
        fp32.write_bytes(raw.read_bytes())
    # Shape inference cannot type the outputs of ORT's fused (contrib) ops;
    # the quantizer's own error message suggests this default.
    quantize_dynamic(str(src), str(int8), weight_type=QuantType.QInt8, per_channel=per_channel,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    quant = (f"onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, "
             f"per_channel={per_channel}): int8 weights per "
             f"{'output channel' if per_channel else 'tensor'}, uint8 activations quantized "
             f"per run (per tensor)")
    note(f"quantized {int8}: {quant}")
    meta = {"exporter": exporter, "optimizer": optimizer, "fused_ops": fused,
            "per_channel": per_channel, "quantization": quant}
    meta_path.write_text(json.dumps(meta, indent=1))
    stamp.write_text(json.dumps(key))
    return fp32, int8, meta


class CasetagRunner:
    """Runs crates/transformer/examples/runtime_bench.rs with JSON in and out."""

    def __init__(self, binary: str, encoder: Path, threads: int, tmp: Path):
        if not os.access(binary, os.X_OK):
            die(f"{binary}: not built (run scripts/compare_runtimes.sh without --skip-build)")
        self.binary, self.encoder, self.tmp = binary, encoder, tmp
        self.env = dict(os.environ, RAYON_NUM_THREADS=str(threads))

    def call(self, mode: str, payload: dict | None = None) -> dict:
        cmd = [self.binary, "--encoder", str(self.encoder), f"--{mode}"]
        if payload is not None:
            f = self.tmp / f"{mode}.json"
            f.write_text(json.dumps(payload))
            cmd.append(str(f))
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if r.returncode != 0:
            die(f"runtime_bench --{mode} failed (exit {r.returncode}): {r.stderr.strip()[-2000:]}")
        return json.loads(r.stdout)


# ---------------------------------------------------------------- timing


def per_round(runs: int, rounds: int) -> int:
    """Each round's share of `runs` timed runs (rounded up: the pooled total
    is at least `runs`)."""
    return -(-runs // rounds)


def time_runs(fn, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def e2e_python(rt, tok: Tok, texts: list[str], head_w, head_b, batch: int):
    """Tokenize + encode (sorted by length, batches of `batch` padded to
    their longest member) + mean pool + head + argmax over all texts."""
    import numpy as np
    ids = tok.ids(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    x = np.empty((len(ids), head_w.shape[1]), dtype=np.float32)
    for k in range(0, len(order), batch):
        chunk = order[k:k + batch]
        x[chunk] = rt.pooled([ids[i] for i in chunk])
    pred = np.argmax(x @ head_w.T + head_b, axis=1)
    return pred, sum(len(s) for s in ids)


def cosines(a, b):
    import numpy as np
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------- report


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "ms":
        return f"{v:.2f}"
    return f"{v:.1f}"


def fmt_x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def build_table(metrics: list[dict]) -> str:
    """One table: per metric a row of values and a row of speed-ups against
    PyTorch fp32; the last two columns compare casetag with ORT at the same
    precision (all speed-ups: > 1 means faster than the reference)."""
    cols = [LABELS[r] for r in RUNTIMES]
    w0, w = 34, 13
    head = f"{'metric':<{w0}}" + "".join(f"{c:>{w}}" for c in cols)
    head += f" |{'casetag/ORT fp32':>17}{'casetag/ORT int8':>17}"
    lines = [head, "-" * len(head)]
    for m in metrics:
        vals = m["values"]

        def speed(x, ref):
            if x is None or ref is None:
                return None
            return ref / x if m["unit"] == "ms" else x / ref

        row = f"{m['label'] + ' (' + m['unit'] + ')':<{w0}}"
        row += "".join(f"{fmt(vals.get(r), m['unit']):>{w}}" for r in RUNTIMES)
        s32 = speed(vals.get("casetag_fp32"), vals.get("ort_fp32"))
        s8 = speed(vals.get("casetag_int8"), vals.get("ort_int8"))
        row += f" |{fmt_x(s32):>17}{fmt_x(s8):>17}"
        lines.append(row)
        ref = vals.get("torch_fp32")
        row = f"{'  speed-up vs PyTorch fp32':<{w0}}"
        for r in RUNTIMES:
            s = speed(vals.get(r), ref)
            row += f"{fmt_x(s):>{w}}"
        lines.append(row + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main() -> None:
    a = parse_args()
    t_start = time.perf_counter()
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[k] = str(a.threads)
    import numpy as np

    encoder = Path(a.encoder)
    if not (encoder / "model.safetensors").is_file() or not (encoder / "tokenizer.json").is_file():
        die(f"{encoder}: no model.safetensors/tokenizer.json (run scripts/fetch_encoder.sh)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"aftersales": read_texts(a.aftersales, "aftersales"),
            "banking77": read_texts(a.banking77, "banking77")}
    note(f"texts: aftersales {len(data['aftersales'])}, banking77 {len(data['banking77'])}")

    info = system_info(a.threads)
    info["loadavg_start"] = os.getloadavg()
    cpu_start = cpu_times()
    tmp = Path(tempfile.mkdtemp(prefix="compare_runtimes_"))
    casetag = CasetagRunner(a.bench_bin, encoder, a.threads, tmp)
    info["casetag"] = casetag.call("info")["runtime"]
    import onnxruntime as ort
    info["onnxruntime"] = ort.__version__
    info["numpy"] = np.__version__
    try:
        import tokenizers
        info["tokenizers"] = tokenizers.__version__
    except ImportError as e:
        die(f"tokenizers is not installed: {e}")

    missing: dict[str, str] = {}
    rts: dict = {}
    if a.no_torch:
        missing["torch_fp32"] = "--no-torch given"
    else:
        try:
            import torch
            import transformers
            info["torch"] = torch.__version__
            info["transformers"] = transformers.__version__
            info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
            info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
            rts["torch_fp32"] = TorchRuntime(encoder, a.threads)
            info["torch_threads"] = torch.get_num_threads()
            info["torch_attention"] = rts["torch_fp32"].attn
        except Exception as e:  # report, and run the others
            missing["torch_fp32"] = f"PyTorch unavailable: {type(e).__name__}: {e}"
            note(missing["torch_fp32"])
    try:
        fp32_path, int8_path, export_meta = export_onnx(encoder, out, a.ort_optimizer,
                                                     not a.ort_int8_per_tensor)
        rts["ort_fp32"] = OrtRuntime(fp32_path, a.threads)
        rts["ort_int8"] = OrtRuntime(int8_path, a.threads)
        info["ort_intra_op_threads"], info["ort_inter_op_threads"] = a.threads, 1
        info["onnx_export"] = export_meta
    except Exception as e:
        for r in ("ort_fp32", "ort_int8"):
            missing[r] = f"ONNX export/session failed: {type(e).__name__}: {e}"
        note(missing["ort_fp32"])

    # ------------------------------------------------ checks before timing
    tok = Tok(encoder, 128)
    check_texts = data["aftersales"][:64] + data["banking77"][:32]
    emb = casetag.call("embed", {"texts": check_texts, "max_tokens": 128, "batch_size": 32})
    py_ids = tok.ids(check_texts)
    bad = [i for i, (x, y) in enumerate(zip(py_ids, emb["ids"])) if x != y]
    if bad:
        i = bad[0]
        die(f"tokenization differs from casetag's on {len(bad)}/{len(check_texts)} texts; "
            f"first: text {i}: python {py_ids[i][:12]}... vs casetag {emb['ids'][i][:12]}...")
    note(f"token ids identical to casetag's on {len(check_texts)} texts")
    ref = np.asarray(emb["f32"], dtype=np.float32)
    checks: dict = {"n_texts": len(check_texts), "ids_identical": True, "cosine_to_casetag_fp32": {}}
    failures = []
    for r in RUNTIMES:
        if r in missing:
            continue
        if r.startswith("casetag"):
            x = np.asarray(emb["f32" if r == "casetag_fp32" else "int8"], dtype=np.float32)
        else:
            x = np.concatenate([rts[r].pooled(py_ids[k:k + 32])
                                for k in range(0, len(py_ids), 32)])
        c = cosines(x, ref)
        checks["cosine_to_casetag_fp32"][r] = {"min": float(c.min()), "mean": float(c.mean())}
        status = ""
        if r in ("torch_fp32", "ort_fp32"):
            ok = c.min() >= MIN_COSINE
            status = "ok" if ok else f"FAIL (< {MIN_COSINE})"
            if not ok:
                failures.append(f"{LABELS[r]} min cosine {c.min():.6f}")
        else:
            status = "(reported only)"
        note(f"cosine to casetag fp32, {LABELS[r]:>12}: min {c.min():.6f} mean {c.mean():.6f} {status}")
    if failures:
        die("fp32 embeddings disagree with casetag fp32: " + "; ".join(failures))

    # ------------------------------------------------ shapes
    rng = np.random.default_rng(a.seed)
    cases = []
    for kind, shapes, runs in (("latency", LATENCY_SHAPES, a.runs),
                               ("throughput", THROUGHPUT_SHAPES, a.tp_runs)):
        for b, s in shapes:
            ids = [[tok.cls] + rng.integers(1000, 29000, size=s - 2).tolist() + [tok.sep]
                   for _ in range(b)]
            cases.append({"name": f"{b}x{s}", "kind": kind, "b": b, "ids": ids,
                          "warmup": a.warmup, "runs": runs})
    # One shape at a time, every runtime in turn, and the whole in rounds
    # (each with its share of the runs, pooled): a burst of load from other
    # processes then hits all runtimes alike.
    for c in cases:
        c["runs"] = per_round(c["runs"], a.rounds) * a.rounds
    times: dict[str, dict[str, list[float]]] = {r: {c["name"]: [] for c in cases} for r in RUNTIMES}
    for rnd in range(1, a.rounds + 1):
        for c in cases:
            runs = c["runs"] // a.rounds
            for r in ("torch_fp32", "ort_fp32", "ort_int8"):
                if r in missing:
                    continue
                t = time_runs(lambda: rts[r].pooled(c["ids"]), c["warmup"], runs)
                times[r][c["name"]] += t
                note(f"round {rnd}: {LABELS[r]} {c['name']}: median {med(t):.2f} ms")
            one = {k: c[k] for k in ("name", "ids", "warmup")}
            res = casetag.call("shapes", {"cases": [dict(one, runs=runs)]})
            for x in res["results"]:
                r = "casetag_fp32" if x["precision"] == "f32" else "casetag_int8"
                times[r][x["name"]] += x["times_ms"]
                note(f"round {rnd}: {LABELS[r]} {x['name']}: median {med(x['times_ms']):.2f} ms")
    times = {r: {k: t for k, t in v.items() if t} for r, v in times.items()}

    # ------------------------------------------------ end to end
    n_classes, hidden = 77, ref.shape[1]
    hrng = np.random.default_rng(a.seed + 1)
    head_w = (hrng.standard_normal((n_classes, hidden)) / np.sqrt(hidden)).astype(np.float32)
    head_b = (0.01 * hrng.standard_normal(n_classes)).astype(np.float32)
    e2e: dict = {r: {} for r in RUNTIMES}
    head = {"weight": head_w.tolist(), "bias": head_b.tolist()}
    e2e_runs = per_round(a.e2e_runs, a.rounds)
    for rnd in range(1, a.rounds + 1):
        for name, texts in data.items():
            for r in ("torch_fp32", "ort_fp32", "ort_int8"):
                if r in missing:
                    continue
                # Warm-up: the first WARMUP_BATCHES batches (as runtime_bench does).
                e2e_python(rts[r], tok, texts[:WARMUP_BATCHES * 32], head_w, head_b, 32)
                ts, pred, ntok = [], None, 0
                for _ in range(e2e_runs):
                    t = time.perf_counter()
                    pred, ntok = e2e_python(rts[r], tok, texts, head_w, head_b, 32)
                    ts.append((time.perf_counter() - t) * 1e3)
                got = e2e[r].setdefault(name, {"times_ms": [], "tokens": ntok, "n": len(texts)})
                got["times_ms"] += ts
                got["pred"] = pred.tolist()
                note(f"round {rnd}: {LABELS[r]} e2e {name}: median {med(ts) / 1e3:.2f} s")
            res = casetag.call("e2e", {"max_tokens": 128, "batch_size": 32, "warmup": 1,
                                       "runs": e2e_runs,
                                       "datasets": [{"name": name, "texts": texts, "head": head}]})
            for x in res["results"]:
                r = "casetag_fp32" if x["precision"] == "f32" else "casetag_int8"
                got = e2e[r].setdefault(x["name"], {k: x[k] for k in ("tokens", "n")})
                got["times_ms"] = got.get("times_ms", []) + x["times_ms"]
                got["pred"] = x["pred"]
                note(f"round {rnd}: {LABELS[r]} e2e {x['name']}: median {med(x['times_ms']) / 1e3:.2f} s")

    # ------------------------------------------------ table and JSON
    metrics = []
    for c in cases:
        vals = {}
        for r in RUNTIMES:
            t = times[r].get(c["name"])
            if t is None:
                vals[r] = None
            elif c["kind"] == "latency":
                vals[r] = med(t)
            else:
                vals[r] = c["b"] / (med(t) / 1e3)
        unit = "ms" if c["kind"] == "latency" else "seq/s"
        label = f"{c['kind']} {c['name']}" + (" median" if unit == "ms" else "")
        metrics.append({"label": label, "key": f"{c['kind']}_{c['name']}", "unit": unit,
                        "values": vals, "runs": c["runs"], "warmup": c["warmup"]})
    for name in data:
        vals = {r: (e2e[r][name]["n"] / (med(e2e[r][name]["times_ms"]) / 1e3)
                    if name in e2e[r] else None) for r in RUNTIMES}
        metrics.append({"label": f"e2e {name} ({len(data[name])})", "key": f"e2e_{name}",
                        "unit": "seq/s", "values": vals, "runs": e2e_runs * a.rounds, "warmup": 1})

    table = build_table(metrics)
    agree = {}
    tokens = {}
    for name in data:
        base = e2e["casetag_fp32"].get(name)
        tokens[name] = {r: e2e[r][name]["tokens"] for r in RUNTIMES if name in e2e[r]}
        agree[name] = {r: float(np.mean(np.asarray(e2e[r][name]["pred"]) == np.asarray(base["pred"])))
                       for r in RUNTIMES if name in e2e[r] and base}
    wall = time.perf_counter() - t_start
    info["loadavg_end"] = os.getloadavg()
    info["steal_share"] = steal_share(cpu_start, cpu_times())

    cpu = info["cpu_flags"]
    print()
    print("== runtime comparison: all-MiniLM-L6-v2, CPU ==")
    print(f"CPU: {info['cpu_model']} ({info['nproc']} logical CPUs); avx512_vnni={cpu['avx512_vnni']} "
          f"avx2={cpu['avx2']} fma={cpu['fma']} avx512f={cpu['avx512f']} amx_int8={cpu['amx_int8']}")
    ci = info["casetag"]
    print(f"casetag: f32 kernel {ci['f32_kernel']}, int8 kernel {ci['int8_kernel']}"
          + (f" ({ci['int8_kernel_note']})" if ci.get("int8_kernel_note") else "")
          + f", rayon threads {ci['threads']}")
    if "torch" in info:
        print(f"torch {info['torch']} (transformers {info['transformers']}, attention "
              f"'{info.get('torch_attention')}', cpu capability {info['torch_cpu_capability']}), "
              f"threads {info.get('torch_threads')} intra / 1 interop")
    if "onnx_export" in info:
        ex = info["onnx_export"]
        print(f"onnxruntime {info['onnxruntime']}: intra_op {a.threads}, inter_op 1, sequential, "
              f"ORT_ENABLE_ALL; export {ex['exporter']}; BERT optimizer: "
              f"{'on, fused ' + json.dumps(ex['fused_ops']) if ex['optimizer'] == 'bert' else 'off'}")
        print(f"ORT int8: {ex['quantization']}")
    for r, why in missing.items():
        print(f"{LABELS[r]}: missing: {why}")
    print(f"tokenizers {info['tokenizers']}, numpy {info['numpy']}, python {info['python']}")
    lat_runs, tp_runs = (per_round(n, a.rounds) * a.rounds for n in (a.runs, a.tp_runs))
    print(f"policy: {a.rounds} rounds over all runtimes, each with its share of the runs, pooled; "
          f"latency = median of {lat_runs} runs, {a.warmup} warm-up a round; throughput = "
          f"batch / median of {tp_runs} runs, {a.warmup} warm-up a round; e2e = tokenize (max 128, "
          f"head truncation) + sort by length + batches of 32 padded to their longest (casetag: "
          f"packed, no padding) + mean pool + seeded random 384x{n_classes} linear head + argmax, "
          f"median of {e2e_runs * a.rounds} runs, a warm-up on the first {WARMUP_BATCHES} batches a round; "
          f"runtimes take turns shape by shape and dataset by dataset")
    print(f"checks: token ids identical on {checks['n_texts']} texts; min cosine to casetag fp32: "
          + ", ".join(f"{LABELS[r]} {v['min']:.6f}" for r, v in checks["cosine_to_casetag_fp32"].items()))
    print()
    print(table)
    print()
    for name in data:
        print(f"e2e {name}: tokens per runtime {sorted(set(tokens[name].values()))}; "
              "argmax agreement with casetag fp32: "
              + ", ".join(f"{LABELS[r]} {v:.1%}" for r, v in agree[name].items()))
    la0, la1 = info["loadavg_start"], info["loadavg_end"]
    print(f"load average (1/5/15 min) at start {la0[0]:.2f}/{la0[1]:.2f}/{la0[2]:.2f}, at end "
          f"{la1[0]:.2f}/{la1[1]:.2f}/{la1[2]:.2f} on {info['nproc']} CPUs (above ~{a.threads} "
          f"means other processes competed for the cores: timings are noisy)")
    if info["steal_share"] is not None:
        print(f"steal time: {info['steal_share']:.1%} of the CPU time during the comparison (time "
              "the hypervisor gave to other machines; above ~1% the timings are noisy)")
    print(f"wall time of the comparison: {wall:.0f} s")

    result = {"system": info, "missing": missing, "checks": checks,
              "policy": {"threads": a.threads, "rounds": a.rounds, "latency_runs": lat_runs,
                         "throughput_runs": tp_runs, "e2e_runs": e2e_runs * a.rounds,
                         "warmup": a.warmup, "seed": a.seed,
                         "max_tokens": 128, "truncation": "head", "batch_size": 32,
                         "sorted_by_length": True, "head": f"{n_classes}x{hidden} random normal/sqrt(h)",
                         "ort_optimizer": a.ort_optimizer,
                         "ort_int8_per_channel": not a.ort_int8_per_tensor},
              "metrics": metrics,
              "ratios": {m["key"]: {
                  "speedup_vs_torch_fp32": {
                      r: (None if m["values"].get(r) is None or m["values"].get("torch_fp32") is None
                          else (m["values"]["torch_fp32"] / m["values"][r] if m["unit"] == "ms"
                                else m["values"][r] / m["values"]["torch_fp32"]))
                      for r in RUNTIMES},
                  "casetag_fp32_vs_ort_fp32": _speed(m, "casetag_fp32", "ort_fp32"),
                  "casetag_int8_vs_ort_int8": _speed(m, "casetag_int8", "ort_int8")}
                  for m in metrics},
              "raw_times_ms": times,
              "e2e": {r: {n: {k: v for k, v in d.items() if k != "pred"} for n, d in e2e[r].items()}
                      for r in RUNTIMES},
              "e2e_argmax_agreement_with_casetag_fp32": agree,
              "table": table, "wall_s": wall}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'results.json'}")


def _speed(m: dict, a: str, b: str) -> float | None:
    x, y = m["values"].get(a), m["values"].get(b)
    if x is None or y is None:
        return None
    return y / x if m["unit"] == "ms" else x / y


if __name__ == "__main__":
    main()
