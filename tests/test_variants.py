"""Zero-shot variant scoring (dnabert.run.variants, python -m dnabert.tools.score_variants): parity with a
brute-force computation over the whole vocabulary (k-mers, BPE, a third family), reverse-complement symmetry,
row-level reasons, bgzip input, bad input, and a model pretrained on a genome with a planted motif."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from sklearn.metrics import roc_auc_score
from tokenizers import trainers

from benchmarks.variant_motif import motif_auroc
from dnabert.data.genome import Reference
from dnabert.data.tokenizers.bpe import new_bpe_tokenizer, save_bpe
from dnabert.data.tokenizers.kmer import vocab_size
from dnabert.data.tokenizers.special import SPECIAL_TOKENS
from dnabert.data.vcf import Variant, read_vcf
from dnabert.errors import DnabertError
from dnabert.models import DEFAULT_FAMILY, FAMILIES, get_family
from dnabert.run.finetuning import Backbone
from dnabert.run.probe import DownstreamProbe, VariantProbe
from dnabert.run.training import probe_callbacks
from dnabert.run.variants import SCORED, VariantScorer
from dnabert.tools.score_variants import main, scorer_for
from tests.conftest import ROOT, write_text

THIRD_FAMILY = "tests.third_family:FAMILY"
COMPLEMENT = str.maketrans("ACGT", "TGCA")
VCF_HEADER = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a shared 2-core machine two threads are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_fasta(path: Path, contigs: dict[str, str]) -> Path:
    path.write_text("".join(f">{name}\n" + "".join(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60))
                            for name, seq in contigs.items()))
    return path


def write_vcf(path: Path, records: list[tuple], bgzip: bool = False) -> Path:
    text = VCF_HEADER + "".join("\t".join(map(str, (chrom, pos, name, ref, alt, ".", ".", info))) + "\n"
                                for chrom, pos, name, ref, alt, info in records)
    return write_text(path, text, bgzip)


def random_dna(length: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), length))


def sharpened(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights far from the near-uniform initialisation, so the distributions compared are not flat."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    return model.eval()


def kmer_backbone(family: str = DEFAULT_FAMILY, k: int = 3, positions: int = 16, seed: int = 0) -> Backbone:
    config = dict(vocab_size=vocab_size(k), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=positions)
    model = sharpened(get_family(family).build(config), seed)
    return Backbone(get_family(family).name, k, dict(model.config.to_dict()), model.state_dict(), "test")


def window(length: int, position: int, width: int) -> tuple[int, int]:
    """The definition: `width` bp (odd) centred on the variant, slid inside the contig; a short contig whole."""
    if length <= width:
        return 0, length
    start = min(max(position - width // 2, 0), length - width)
    return start, start + width


def brute_kmer_ratio(model: torch.nn.Module, text: str, index: int, ref: str, alt: str, k: int) -> float:
    """Every k-mer token containing base `index` masked; each one's probability of b summed over all 4^k k-mers
    with b at the base's offset (softmax over the k-mers only); the tokens' log ratios averaged."""
    kmers = ["".join(letters) for letters in itertools.product("ATCG", repeat=k)]
    tokens = [text[t:t + k] for t in range(len(text) - k + 1)]
    ids = [SPECIAL_TOKENS.index("[CLS]")] + [5 + kmers.index(token) for token in tokens] + [3]
    covering = [t for t in range(len(tokens)) if t <= index < t + k]
    for t in covering:
        ids[t + 1] = SPECIAL_TOKENS.index("[MASK]")
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].double()
    ratios = []
    for t in covering:
        probabilities = logits[t + 1, 5:].softmax(-1)
        p = {base: sum(float(probabilities[j]) for j, kmer in enumerate(kmers) if kmer[index - t] == base)
             for base in "ACGT"}
        ratios.append(math.log(p[alt]) - math.log(p[ref]))
    return sum(ratios) / len(ratios)


def reverse_complement(text: str) -> str:
    return text.translate(COMPLEMENT)[::-1]


@pytest.mark.parametrize("family", [DEFAULT_FAMILY, THIRD_FAMILY])
def test_kmer_scores_equal_a_brute_force_sum_over_every_kmer(tmp_path: Path, family: str) -> None:
    k, positions = 3, 16
    backbone = kmer_backbone(family, k, positions)
    scorer = scorer_for(backbone)
    model = scorer.model
    contigs = {"c1": random_dna(80, 1), "short": random_dna(9, 2)}
    reference = Reference(write_fasta(tmp_path / "g.fa", contigs))
    # the middle, both contig ends (the window slides inward), a contig shorter than the window
    sites = [("c1", 40), ("c1", 1), ("c1", 3), ("c1", 80), ("c1", 77), ("short", 5), ("short", 1)]
    variants = [Variant(chrom, pos, ".", contigs[chrom][pos - 1], "ACGT"[("ACGT".index(contigs[chrom][pos - 1])
                                                                          + 1 + pos) % 4])
                for chrom, pos in sites]
    width = positions - 2 + k - 1
    width -= 1 - width % 2
    for rc in (False, True):
        rows = scorer.score(reference, variants, reverse_complement=rc, batch_size=3)
        for variant, row in zip(variants, rows, strict=True):
            sequence = contigs[variant.chrom]
            start, end = window(len(sequence), variant.pos - 1, width)
            text, index = sequence[start:end], variant.pos - 1 - start
            expected = brute_kmer_ratio(model, text, index, variant.ref, variant.alt, k)
            if rc:
                expected = (expected + brute_kmer_ratio(model, reverse_complement(text), len(text) - 1 - index,
                                                        variant.ref.translate(COMPLEMENT),
                                                        variant.alt.translate(COMPLEMENT), k)) / 2
            assert row.status == SCORED
            assert row.score == pytest.approx(expected, abs=1e-5), (variant, rc)
    assert max(abs(row.score) for row in rows) > 0.1  # the comparison is not between near-zero numbers


def tiny_bpe(tmp_path: Path) -> Path:
    tokenizer = new_bpe_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=48, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=list("ATCG"))
    tokenizer.train_from_iterator([random_dna(400, seed) for seed in range(20)], trainer=trainer)
    return save_bpe(tokenizer, tmp_path / "bpe")


def test_bpe_scores_equal_a_brute_force_sum_over_same_length_tokens(tmp_path: Path) -> None:
    tokenizer_file = tiny_bpe(tmp_path)
    bpe_family = next(family for family in FAMILIES.values() if family.tokenizer == "bpe")
    model = sharpened(bpe_family.build(dict(vocab_size=48, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=48)), 0)
    positions = 10
    scorer = VariantScorer(model, positions, tokenizer_file=str(tokenizer_file))
    tokenizer = scorer.sites.tokenizer
    vocabulary = {token: index for token, index in tokenizer.get_vocab().items() if index >= 5}
    sequence = random_dna(120, 3)
    reference = Reference(write_fasta(tmp_path / "g.fa", {"c1": sequence}))
    variants = [Variant("c1", pos, ".", sequence[pos - 1], "ACGT"[("ACGT".index(sequence[pos - 1]) + 2) % 4])
                for pos in (60, 2, 119, 33)]
    width = (positions - 2) * max(map(len, vocabulary))
    width -= 1 - width % 2
    rows = scorer.score(reference, variants)
    compared = 0
    for variant, row in zip(variants, rows, strict=True):
        start, end = window(len(sequence), variant.pos - 1, width)
        text, index = sequence[start:end], variant.pos - 1 - start
        encoding = tokenizer.encode(text, add_special_tokens=False)
        covering = next(i for i, (a, b) in enumerate(encoding.offsets) if a <= index < b)
        first = max(0, min(covering - (positions - 3) // 2, len(encoding.ids) - (positions - 2)))
        kept = encoding.ids[first:first + positions - 2]
        ids = [2, *kept, 3]
        ids[covering - first + 1] = 4
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, covering - first + 1].double()
        token_start, token_end = encoding.offsets[covering]
        same_length = {token: index for token, index in vocabulary.items() if len(token) == token_end - token_start}
        probabilities = logits[list(same_length.values())].softmax(-1)
        offset = index - token_start
        p = {base: sum(float(probabilities[j]) for j, token in enumerate(same_length) if token[offset] == base)
             for base in "ACGT"}
        if p[variant.ref] == 0 or p[variant.alt] == 0:
            assert row.status == "allele_not_in_vocabulary"
            continue
        assert row.status == SCORED
        assert row.score == pytest.approx(math.log(p[variant.alt]) - math.log(p[variant.ref]), abs=1e-5)
        compared += 1
    assert compared >= 2


def test_reverse_complement_scores_are_strand_symmetric(tmp_path: Path) -> None:
    """With --reverse-complement, a variant scores the same as its mirror image on the reverse-complement genome."""
    backbone = kmer_backbone(k=4, positions=20)
    scorer = scorer_for(backbone)
    sequence = random_dna(90, 5)
    forward = Reference(write_fasta(tmp_path / "f.fa", {"c": sequence}))
    backward = Reference(write_fasta(tmp_path / "r.fa", {"c": reverse_complement(sequence)}))
    positions = [1, 2, 10, 45, 46, 88, 90]
    variants = [Variant("c", pos, ".", sequence[pos - 1], "ACGT"[("ACGT".index(sequence[pos - 1]) + 1) % 4])
                for pos in positions]
    mirrored = [Variant("c", len(sequence) + 1 - v.pos, ".", v.ref.translate(COMPLEMENT), v.alt.translate(COMPLEMENT))
                for v in variants]
    one = scorer.score(forward, variants, reverse_complement=True)
    other = scorer.score(backward, mirrored, reverse_complement=True)
    for a, b in zip(one, other, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)
    single = scorer.score(forward, variants)
    assert any(abs(a.score - b.score) > 1e-3 for a, b in zip(one, single, strict=True))  # the strands differ


@pytest.fixture(scope="module")
def exported_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny k-mer model written as a transformers directory: what the command line reads."""
    backbone = kmer_backbone(k=3, positions=16)
    family = get_family(backbone.family)
    model = family.build(backbone.config)
    model.load_state_dict(backbone.weights)
    return family.export(model, tmp_path_factory.mktemp("model") / "hf_model", None, 3, None, None)


def test_rows_that_cannot_be_scored_say_why_and_bgzip_inputs_and_parquet_give_the_same_rows(
        tmp_path: Path, exported_backbone: Path) -> None:
    sequence = random_dna(200, 7)
    sequence = sequence[:149] + "N" + sequence[150:]
    fasta = write_fasta(tmp_path / "g.fa", {"c1": sequence, "c2": "ACG"[:2]})
    wrong = "ACGT"[("ACGT".index(sequence[29]) + 1) % 4]
    records = [
        ("c1", 20, "ok", sequence[19], "ACGT"[("ACGT".index(sequence[19]) + 1) % 4], "."),
        ("c1", 30, "mismatch", wrong, sequence[29], "."),
        ("c1", 146, "near_n", sequence[145], "ACGT"[("ACGT".index(sequence[145]) + 1) % 4], "."),
        ("c1", 150, "at_n", "A", "C", "."),
        ("c1", 40, "indel", sequence[39], sequence[39] + "T", "."),
        ("c1", 41, "multi", sequence[40], "A,C", "."),
        ("c1", 42, "symbolic", sequence[41], "<DEL>", "."),
        ("chrZ", 10, "no_contig", "A", "C", "."),
        ("c1", 500, "outside", "A", "C", "."),
        ("c2", 1, "short", "A", "G", "."),
    ]
    plain = write_vcf(tmp_path / "v.vcf", records)
    packed = write_vcf(tmp_path / "v.vcf.gz", records, bgzip=True)
    assert main([str(exported_backbone), str(fasta), str(plain), str(tmp_path / "plain.tsv")]) == 0
    packed_fasta = tmp_path / "g.fa.gz"
    write_text(packed_fasta, fasta.read_text(), bgzip=True)
    assert main([str(exported_backbone), str(packed_fasta), str(packed), str(tmp_path / "packed.parquet")]) == 0
    table = pd.read_csv(tmp_path / "plain.tsv", sep="\t")
    assert list(table.columns) == ["chrom", "pos", "id", "ref", "alt", "score", "status", "note"]
    assert dict(zip(table["id"], table["status"], strict=True)) == {
        "ok": "scored", "mismatch": "reference_mismatch", "near_n": "n_in_context", "at_n": "reference_mismatch",
        "indel": "not_snv", "multi": "multi_allelic", "symbolic": "symbolic", "no_contig": "unknown_contig",
        "outside": "outside_contig", "short": "short_contig"}
    assert table.loc[table["id"] == "mismatch", "note"].item() == f"FASTA has {sequence[29]}"
    assert table["score"].notna().tolist() == [True] + [False] * 9
    parquet = pd.read_parquet(tmp_path / "packed.parquet")
    pd.testing.assert_frame_equal(parquet.astype({"score": "float64"}), table.astype({"note": object}).fillna(
        {"note": ""}), check_dtype=False)


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, exported_backbone: Path, capsys) -> None:
    fasta = write_fasta(tmp_path / "g.fa", {"c1": random_dna(50, 1)})
    vcf = write_vcf(tmp_path / "v.vcf", [("chr1", 5, ".", "A", "C", ".")])
    result = subprocess.run([sys.executable, "-m", "dnabert.tools.score_variants", str(exported_backbone), str(fasta),
                             str(tmp_path / "missing.vcf"), str(tmp_path / "out.tsv")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing.vcf does not exist" in result.stderr
    cases = {
        (str(exported_backbone), str(fasta), str(fasta), "o.tsv"): "not a VCF file",
        (str(exported_backbone), str(fasta), str(vcf), "o.tsv"): "no contig of",
        ("none", str(fasta), str(vcf), "o.tsv"): "no trained MLM head",
        (str(exported_backbone), str(fasta), str(vcf), "o.csv"): ".tsv or .parquet",
    }
    for argv, message in cases.items():
        assert main([*argv[:3], str(tmp_path / argv[3])]) == 2
        assert message in capsys.readouterr().err


def test_motif_breaking_variants_score_below_neutral_ones(tmp_path: Path) -> None:
    """End to end (benchmarks/variant_motif.py): pretrain on a genome with a planted motif, export, score with the
    command line: SNVs that break the motif get lower log-likelihood ratios than SNVs in random background."""
    auroc = motif_auroc(seed=0, directory=tmp_path)
    assert auroc > 0.8, auroc


def test_variant_probe_logs_the_auroc_of_the_scores_and_leaves_the_model_as_found(tmp_path: Path) -> None:
    backbone = kmer_backbone(k=3, positions=16)
    scorer = scorer_for(backbone)
    sequence = random_dna(300, 11)
    fasta = write_fasta(tmp_path / "g.fa", {"c1": sequence})
    records = [("c1", pos, f"v{pos}", sequence[pos - 1], "ACGT"[("ACGT".index(sequence[pos - 1]) + 1) % 4],
                f"LABEL={pos % 2}") for pos in range(20, 280, 13)]
    vcf = write_vcf(tmp_path / "labelled.vcf", [*records, ("c1", 5, "indel", sequence[4], "AT", "LABEL=1"),
                                                ("c1", 6, "unlabelled", sequence[5], "A", ".")])
    probe = VariantProbe(str(vcf), str(fasta), k=3, max_positions=16)
    logged: dict[str, float] = {}
    module = SimpleNamespace(model=scorer.model.train(), device=torch.device("cpu"),
                             log_dict=lambda metrics, rank_zero_only: logged.update(metrics))
    probe.on_validation_epoch_end(SimpleNamespace(sanity_checking=False, is_global_zero=True, global_step=1), module)
    assert scorer.model.training  # left as found
    rows = scorer.score(Reference(fasta), [Variant(c, p, i, r, a) for c, p, i, r, a, _ in records])
    expected = roc_auc_score([pos % 2 for _, pos, *_ in records], [-row.score for row in rows])
    assert logged["probe/variant_auroc"] == pytest.approx(expected)
    assert logged["probe/variant_scored"] == pytest.approx(len(records) / (len(records) + 1))  # the indel
    write_vcf(tmp_path / "one_class.vcf", [record[:5] + ("LABEL=1",) for record in records])
    with pytest.raises(DnabertError, match="INFO LABEL=1"):
        VariantProbe(str(tmp_path / "one_class.vcf"), str(fasta), k=3)


def test_the_run_builds_the_variant_probe_from_its_settings(tmp_path: Path) -> None:
    sequence = random_dna(300, 11)
    fasta = write_fasta(tmp_path / "g.fa", {"c1": sequence})
    vcf = write_vcf(tmp_path / "labelled.vcf", [("c1", pos, ".", sequence[pos - 1], "ACGT"[pos % 4], f"CLASS={pos % 2}")
                                                for pos in range(20, 280, 13) if sequence[pos - 1] != "ACGT"[pos % 4]])
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"probe.variants.vcf={vcf}", f"probe.variants.reference={fasta}",
                                                      "probe.variants.label=CLASS", "data.max_tokens=64",
                                                      "probe.path=null"])
    (probe,) = probe_callbacks(cfg)
    assert isinstance(probe, VariantProbe)
    assert (probe.k, probe.max_positions, len(probe.variants)) == (cfg.tokenizer.k, 64, len(read_vcf(vcf)))
    tokenizer_file = tiny_bpe(tmp_path)  # a BPE run: beside the promoter probe, with the run's tokenizer
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=dnabert2_demo", f"tokenizer.file={tokenizer_file}",
                                                      f"probe.variants.vcf={vcf}", f"probe.variants.reference={fasta}",
                                                      "probe.variants.label=CLASS"])
    promoter, variants = probe_callbacks(cfg)
    assert isinstance(promoter, DownstreamProbe) and isinstance(variants, VariantProbe)
    assert (variants.k, variants.tokenizer_file, variants.max_positions) == (None, str(tokenizer_file),
                                                                            cfg.data.max_tokens)


def test_a_bpe_model_directory_scores_through_the_command_line_as_in_process(tmp_path: Path) -> None:
    tokenizer_file = tiny_bpe(tmp_path)
    bpe_family = next(family for family in FAMILIES.values() if family.tokenizer == "bpe")
    model = sharpened(bpe_family.build(dict(vocab_size=48, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=48)), 0)
    exported = bpe_family.export(model, tmp_path / "model", None, None, tokenizer_file, None)
    sequence = random_dna(120, 3)
    fasta = write_fasta(tmp_path / "g.fa", {"c1": sequence})
    records = [("c1", pos, f"v{pos}", sequence[pos - 1], "ACGT"[("ACGT".index(sequence[pos - 1]) + 1) % 4], ".")
               for pos in (10, 60, 100)]
    vcf = write_vcf(tmp_path / "v.vcf", records)
    argv = [str(exported), str(fasta), str(vcf), str(tmp_path / "out.tsv"), "--max-positions", "10",
            "--reverse-complement"]
    assert main(argv) == 0
    table = pd.read_csv(tmp_path / "out.tsv", sep="\t")
    rows = VariantScorer(model, 10, tokenizer_file=str(tokenizer_file)).score(
        Reference(fasta), read_vcf(vcf), reverse_complement=True)
    expected = [row.score if row.score is not None else math.nan for row in rows]
    np.testing.assert_allclose(table["score"].to_numpy(dtype=float), expected, atol=1e-5)
    assert table["status"].tolist() == [row.status for row in rows] and SCORED in table["status"].tolist()


def test_the_bundled_variants_match_the_bundled_genome_and_all_score(tmp_path: Path, exported_backbone: Path) -> None:
    """data/variants/chr22_random_snvs.vcf (the README's example) fits data/genomes/human_chr22_20-21M.fa: every
    REF is the FASTA's base and every row is scored."""
    vcf = ROOT / "data" / "variants" / "chr22_random_snvs.vcf"
    out = tmp_path / "scores.tsv"
    assert main([str(exported_backbone), str(ROOT / "data" / "genomes" / "human_chr22_20-21M.fa"), str(vcf),
                 str(out)]) == 0
    table = pd.read_csv(out, sep="\t")
    assert len(table) == len(read_vcf(vcf)) == 24
    assert set(table["status"]) == {SCORED} and table["score"].notna().all()
