"""Reading labeled multi-lab .h5ad files: :func:`training.data.load_labeled` and :class:`LabeledData`."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import training.data as data_module
from model.errors import GeneMismatchError, InputError, InputKindError
from model.preprocessing import to_model_input
from training.data import DataReport, LabeledData, bundled_dataset, load_labeled
from training.synthetic import make_multilab


def _counts(adata: anndata.AnnData) -> np.ndarray:
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


def _write(adata: anndata.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


# --- one file, several files ----------------------------------------------------------------------


def test_one_file_is_read_as_given(multilab_adata, multilab_h5ad) -> None:
    data, report = load_labeled(multilab_h5ad)
    assert isinstance(data.X, sp.csr_matrix) and data.X.dtype == np.float32
    assert data.X.shape == multilab_adata.shape
    np.testing.assert_array_equal(data.X.toarray(), _counts(multilab_adata))
    assert data.genes == list(multilab_adata.var_names)
    np.testing.assert_array_equal(data.labels, multilab_adata.obs["cell_type"].astype(str).to_numpy())
    np.testing.assert_array_equal(data.batches, multilab_adata.obs["batch"].astype(str).to_numpy())
    np.testing.assert_array_equal(data.cell_ids, multilab_adata.obs_names.to_numpy())
    assert data.input_kind == "counts" and data.sources == [str(multilab_h5ad)]
    assert data.classes == ["type_0", "type_1", "type_2", "type_3"]
    assert data.batch_names == ["lab_0", "lab_1", "lab_2"]
    assert report.n_cells == 600 and report.n_genes == 120 and report.input_kind == "counts"
    expected = multilab_adata.obs["cell_type"].value_counts()
    assert report.class_counts == {k: int(v) for k, v in sorted(expected.items())}
    assert sum(report.batch_counts.values()) == 600
    assert report.class_by_batch["type_0"]["lab_2"] == int(
        ((multilab_adata.obs["cell_type"] == "type_0") & (multilab_adata.obs["batch"] == "lab_2")).sum()
    )
    assert report.confounded == {} and report.rare_classes == {} and report.warnings == []
    assert report.files[0]["backed"] is False and report.files[0]["matrix"] == "X"


def test_report_is_json_ready_and_readable(multilab_h5ad) -> None:
    _, report = load_labeled(multilab_h5ad)
    decoded = json.loads(json.dumps(report.to_dict()))
    assert decoded["class_counts"] == report.class_counts
    lines = report.lines()
    assert lines[0].startswith("600 cells x 120 genes from 1 file(s); values: raw counts")
    assert any(line.startswith("batches (3): lab_0 ") for line in lines)
    assert any(line.startswith("classes (4): type_0 ") for line in lines)


def test_one_file_per_lab_takes_the_file_stem_as_batch(multilab_adata, lab_files) -> None:
    data, report = load_labeled(lab_files)
    assert data.batch_names == ["lab_0", "lab_1", "lab_2"]
    assert data.n_cells == multilab_adata.n_obs
    for path in lab_files:
        rows = data.batches == path.stem
        original = anndata.read_h5ad(path)
        np.testing.assert_array_equal(data.X[rows].toarray(), _counts(original))
        np.testing.assert_array_equal(data.labels[rows], original.obs["cell_type"].astype(str).to_numpy())
    assert report.genes_per_file == {str(p): 120 for p in lab_files}
    assert report.n_genes_dropped == {str(p): 0 for p in lab_files}
    assert [f["path"] for f in report.files] == [str(p) for p in lab_files]


def test_a_batch_column_in_a_file_wins_over_its_stem(multilab_adata, tmp_path) -> None:
    first = multilab_adata[:300].copy()
    first.obs["batch"] = "run_a"
    second = multilab_adata[300:].copy()
    del second.obs["batch"]
    data, _ = load_labeled([_write(first, tmp_path / "a.h5ad"), _write(second, tmp_path / "second.h5ad")])
    assert data.batch_names == ["run_a", "second"]


def test_genes_are_intersected_in_the_first_files_order_and_reported(multilab_adata, tmp_path) -> None:
    first = multilab_adata[:300, :100].copy()
    second = multilab_adata[300:, 20:].copy()
    second = second[:, list(reversed(second.var_names))].copy()
    paths = [_write(first, tmp_path / "first.h5ad"), _write(second, tmp_path / "second.h5ad")]
    data, report = load_labeled(paths)
    expected_genes = list(multilab_adata.var_names[20:100])
    assert data.genes == expected_genes
    np.testing.assert_array_equal(data.X.toarray(), _counts(multilab_adata[:, expected_genes]))
    assert report.genes_per_file == {str(paths[0]): 100, str(paths[1]): 100}
    assert report.n_genes_dropped == {str(paths[0]): 20, str(paths[1]): 20}
    assert "20 not shared by every file, dropped" in "\n".join(report.lines())


def test_files_without_a_shared_gene_are_refused(multilab_adata, tmp_path) -> None:
    paths = [
        _write(multilab_adata[:300, :50].copy(), tmp_path / "a.h5ad"),
        _write(multilab_adata[300:, 50:].copy(), tmp_path / "b.h5ad"),
    ]
    with pytest.raises(GeneMismatchError, match="share no gene name"):
        load_labeled(paths)


def test_shared_cell_ids_are_prefixed_with_the_file_stem(multilab_adata, tmp_path) -> None:
    a = multilab_adata[:200].copy()
    b = multilab_adata[200:400].copy()
    b.obs_names = a.obs_names
    data, report = load_labeled([_write(a, tmp_path / "a.h5ad"), _write(b, tmp_path / "b.h5ad")])
    assert len(set(data.cell_ids)) == 400
    assert data.cell_ids[0] == f"a:{a.obs_names[0]}" and data.cell_ids[200] == f"b:{a.obs_names[0]}"
    assert any("prefixed" in w for w in report.warnings)


def test_a_single_batch_is_warned_about(multilab_adata, tmp_path) -> None:
    path = _write(multilab_adata[multilab_adata.obs["batch"] == "lab_0"].copy(), tmp_path / "one.h5ad")
    _, report = load_labeled(path)
    assert any("one batch" in w for w in report.warnings)


# --- counts vs log-normalized ----------------------------------------------------------------------


def test_lognormalized_values_are_detected(tmp_path) -> None:
    path = _write(make_multilab(n_cells=200, n_genes=60, seed=3, as_counts=False), tmp_path / "log.h5ad")
    data, report = load_labeled(path)
    assert data.input_kind == report.input_kind == "lognorm"
    assert "log-normalized" in report.lines()[0]


def test_mixing_counts_and_lognormalized_files_is_refused(tmp_path) -> None:
    counts = _write(make_multilab(n_cells=200, n_genes=60, seed=3), tmp_path / "counts.h5ad")
    lognorm = _write(make_multilab(n_cells=200, n_genes=60, seed=4, as_counts=False), tmp_path / "lognorm.h5ad")
    with pytest.raises(InputKindError) as caught:
        load_labeled([counts, lognorm])
    message = str(caught.value)
    assert f"{counts}: raw counts" in message and f"{lognorm}: log-normalized values" in message


def test_the_counts_layer_is_preferred_and_layer_picks_one(multilab_adata, tmp_path) -> None:
    adata = make_multilab(n_cells=200, n_genes=60, seed=3, as_counts=False)
    adata.layers["counts"] = make_multilab(n_cells=200, n_genes=60, seed=3).X
    path = _write(adata, tmp_path / "layers.h5ad")
    data, report = load_labeled(path)
    assert data.input_kind == "counts" and report.files[0]["matrix"] == "layers/counts"
    np.testing.assert_array_equal(data.X.toarray(), adata.layers["counts"].toarray())
    data, report = load_labeled(path, layer="X")
    assert data.input_kind == "lognorm" and report.files[0]["matrix"] == "X"
    with pytest.raises(InputError, match=r"no layer 'raw'; its layers are: counts"):
        load_labeled(path, layer="raw")


def test_values_outside_the_detection_sample_are_still_checked(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(data_module, "DETECTION_SAMPLE_ROWS", 40)
    adata = make_multilab(n_cells=400, n_genes=30, seed=2)
    X = adata.X.tolil()
    X[150, 3] = 0.5  # rows 0-9, 130-139, 260-269, 390-399 are sampled
    adata.X = X.tocsr()
    path = _write(adata, tmp_path / "mixed.h5ad")
    with pytest.raises(InputKindError, match=r"mixed\.h5ad \(X\), cells 0-399: .*non-integer"):
        load_labeled(path)
    with pytest.raises(InputKindError, match=r"cells 100-199: .*non-integer"):
        load_labeled(path, backed=True, chunk_rows=100)


@pytest.mark.parametrize(
    ("value", "message"), [(-1.0, "negative values"), (np.nan, "NaN or infinite")]
)
def test_negative_or_nan_values_are_refused_naming_the_file(tmp_path, value, message) -> None:
    adata = make_multilab(n_cells=100, n_genes=30, seed=2)
    X = adata.X.tolil()
    X[5, 5] = value
    adata.X = X.tocsr()
    path = _write(adata, tmp_path / "bad.h5ad")
    with pytest.raises(InputKindError, match=rf"bad\.h5ad \(X\).*{message}"):
        load_labeled(path)


# --- bad input ----------------------------------------------------------------------------------------


def test_a_missing_label_column_names_the_columns_there_are(multilab_h5ad) -> None:
    with pytest.raises(InputError, match=r"no label column 'celltype' in obs; its columns are: 'cell_type', 'batch'"):
        load_labeled(multilab_h5ad, label_key="celltype")


def test_only_the_label_and_batch_columns_of_obs_are_read(multilab_adata, tmp_path, monkeypatch) -> None:
    adata = multilab_adata.copy()
    adata.obs["n_counts"] = np.arange(adata.n_obs, dtype=float)
    adata.obs["donor"] = pd.Categorical(["d1", "d2"] * (adata.n_obs // 2) + ["d1"] * (adata.n_obs % 2))
    path = tmp_path / "wide_obs.h5ad"
    adata.write_h5ad(path)
    read = []
    real_read_elem = data_module.read_elem
    monkeypatch.setattr(data_module, "read_elem", lambda element: read.append(element.name) or real_read_elem(element))
    data, _ = load_labeled(path)
    assert data.labels.tolist() == adata.obs["cell_type"].astype(str).tolist()
    assert data.cell_ids.tolist() == adata.obs_names.tolist()
    assert not {"/obs/n_counts", "/obs/donor"} & set(read) and {"/obs/cell_type", "/obs/batch"} <= set(read)
    with pytest.raises(InputError, match=r"its columns are: 'cell_type', 'batch', 'n_counts', 'donor'"):
        load_labeled(path, label_key="celltype")


def test_a_single_file_needs_its_batch_column(multilab_h5ad) -> None:
    with pytest.raises(InputError, match=r"no batch column 'lab' in obs.*one file per lab"):
        load_labeled(multilab_h5ad, batch_key="lab")


def test_missing_labels_are_refused_with_examples(multilab_adata, tmp_path) -> None:
    adata = multilab_adata[:50].copy()
    labels = adata.obs["cell_type"].astype(object)
    labels.iloc[[3, 7]] = np.nan
    adata.obs["cell_type"] = labels
    path = _write(adata, tmp_path / "nan.h5ad")
    with pytest.raises(InputError, match=rf"2 cell\(s\) have no label in obs\['cell_type'\] \(e\.g\. '{adata.obs_names[3]}'"):
        load_labeled(path)


def test_missing_unreadable_and_repeated_files_are_refused(multilab_h5ad, tmp_path) -> None:
    with pytest.raises(InputError, match="input file not found"):
        load_labeled(tmp_path / "nope.h5ad")
    text = tmp_path / "notes.h5ad"
    text.write_text("not an HDF5 file")
    with pytest.raises(InputError, match=r"cannot read .*notes\.h5ad as an \.h5ad \(HDF5\) file"):
        load_labeled(text)
    with pytest.raises(InputError, match="is not a file"):
        load_labeled(tmp_path)
    with pytest.raises(InputError, match="more than once"):
        load_labeled([multilab_h5ad, multilab_h5ad])
    with pytest.raises(InputError, match="no input file"):
        load_labeled([])


def test_an_hdf5_file_that_is_not_anndata_is_refused(tmp_path) -> None:
    import h5py

    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["values"] = np.arange(3)
    with pytest.raises(InputError, match=r"not a readable \.h5ad file"):
        load_labeled(path)


def test_duplicated_gene_names_are_refused(multilab_adata, tmp_path) -> None:
    adata = multilab_adata[:50].copy()
    names = list(adata.var_names)
    names[1] = names[0]
    adata.var_names = names
    path = _write(adata, tmp_path / "dup.h5ad")
    with pytest.raises(InputError, match=r"1 gene name\(s\) appear more than once in var_names \('gene_000'\)"):
        load_labeled(path)


def test_invalid_options_are_refused(multilab_h5ad) -> None:
    with pytest.raises(ValueError, match="backed must be"):
        load_labeled(multilab_h5ad, backed="r")
    with pytest.raises(ValueError, match="chunk_rows"):
        load_labeled(multilab_h5ad, chunk_rows=0)


# --- classes ---------------------------------------------------------------------------------------------


def test_confounded_and_rare_classes_are_reported(tmp_path) -> None:
    adata = make_multilab(n_cells=600, n_genes=40, n_types=4, n_labs=3, confounded=True, seed=5)
    type_0 = (adata.obs["cell_type"] == "type_0").to_numpy()
    kept = [np.flatnonzero(type_0 & (adata.obs["batch"] == lab).to_numpy())[:2] for lab in ("lab_0", "lab_1")]
    adata = adata[np.sort(np.concatenate([np.flatnonzero(~type_0), *kept]))].copy()
    _, report = load_labeled(_write(adata, tmp_path / "confounded.h5ad"), min_cells_per_class=5)
    assert report.confounded == {"type_3": "lab_0"}
    assert report.rare_classes == {"type_0": 4}
    text = "\n".join(report.lines())
    assert "class 'type_3' is only in batch 'lab_0': the model cannot tell biology from lab there" in text
    assert "rare classes (< 5 cells): type_0 4" in text


def test_the_report_describes_a_subset() -> None:
    data = LabeledData(
        X=sp.csr_matrix(np.ones((4, 2), dtype=np.float32)),
        genes=["a", "b"],
        labels=np.array(["x", "x", "y", "y"]),
        batches=np.array(["1", "2", "1", "1"]),
        cell_ids=np.array(["c0", "c1", "c2", "c3"]),
        input_kind="counts",
    )
    report = DataReport.build(data.subset([0, 1, 2]), min_cells_per_class=2)
    assert report.class_by_batch == {"x": {"1": 1, "2": 1}, "y": {"1": 1, "2": 0}}
    assert report.confounded == {"y": "1"} and report.rare_classes == {"y": 1}


# --- backed mode -----------------------------------------------------------------------------------------


def test_backed_reading_in_row_chunks_gives_the_same_data(multilab_h5ad) -> None:
    whole, whole_report = load_labeled(multilab_h5ad, backed=False)
    chunked, chunked_report = load_labeled(multilab_h5ad, backed=True, chunk_rows=37)
    assert (whole.X != chunked.X).nnz == 0 and whole.genes == chunked.genes
    np.testing.assert_array_equal(whole.labels, chunked.labels)
    assert chunked_report.files[0]["backed"] is True and whole_report.files[0]["backed"] is False
    assert chunked_report.to_dict() | {"files": []} == whole_report.to_dict() | {"files": []}


@settings(max_examples=10, deadline=None)
@given(chunk_rows=st.integers(1, 700))
def test_any_chunk_size_reads_the_same_data(multilab_adata, lab_files, chunk_rows) -> None:
    data, report = load_labeled(lab_files, backed=True, chunk_rows=chunk_rows)
    assert all(f["backed"] for f in report.files)
    for path in lab_files:
        rows = data.batches == path.stem
        np.testing.assert_array_equal(data.X[rows].toarray(), _counts(anndata.read_h5ad(path)))
    assert data.X.has_canonical_format and data.X.nnz == multilab_adata.X.nnz


def test_auto_reads_in_row_chunks_when_memory_is_short(monkeypatch, multilab_h5ad) -> None:
    _, report = load_labeled(multilab_h5ad)
    assert report.files[0]["backed"] is False
    monkeypatch.setattr(data_module, "_available_memory_bytes", lambda: 1000)
    data, report = load_labeled(multilab_h5ad)
    assert report.files[0]["backed"] is True
    assert data.n_cells == 600


def test_dense_and_csc_matrices_are_read_as_csr(multilab_adata, tmp_path) -> None:
    dense = multilab_adata[:100].copy()
    dense.X = dense.X.toarray()
    csc = multilab_adata[:100].copy()
    csc.X = sp.csc_matrix(csc.X)
    expected = _counts(multilab_adata[:100])
    for name, adata in (("dense", dense), ("csc", csc)):
        path = _write(adata, tmp_path / f"{name}.h5ad")
        for backed in (False, True):
            data, report = load_labeled(path, backed=backed, chunk_rows=30)
            assert isinstance(data.X, sp.csr_matrix) and data.X.dtype == np.float32
            np.testing.assert_array_equal(data.X.toarray(), expected)
        assert any("column-wise (CSC)" in w for w in report.warnings) == (name == "csc")


# --- LabeledData ------------------------------------------------------------------------------------------


def test_subset_takes_an_index_or_a_mask(multilab_h5ad) -> None:
    data, _ = load_labeled(multilab_h5ad)
    picked = data.subset(np.array([5, 1, 5]))
    np.testing.assert_array_equal(picked.X.toarray(), data.X[[5, 1, 5]].toarray())
    np.testing.assert_array_equal(picked.cell_ids, data.cell_ids[[5, 1, 5]])
    mask = data.batches == "lab_1"
    masked = data.subset(mask)
    assert masked.batch_names == ["lab_1"] and masked.n_cells == int(mask.sum())
    assert data.subset([]).n_cells == 0
    with pytest.raises(ValueError, match="one entry per cell"):
        data.subset(mask[:10])
    with pytest.raises(TypeError, match="integer indices or a boolean mask"):
        data.subset(np.array([0.5]))


def test_select_genes_reorders_columns_by_name(multilab_h5ad) -> None:
    data, _ = load_labeled(multilab_h5ad)
    chosen = [data.genes[7], data.genes[2], data.genes[50]]
    picked = data.select_genes(chosen)
    assert picked.genes == chosen and picked.n_genes == 3
    np.testing.assert_array_equal(picked.X.toarray(), data.X[:, [7, 2, 50]].toarray())
    with pytest.raises(GeneMismatchError, match="not in the data"):
        data.select_genes(["gene_000", "MYC"])
    with pytest.raises(GeneMismatchError, match="more than once"):
        data.select_genes(["gene_000", "gene_000"])


def test_model_input_is_the_shared_preprocessing_of_the_rows(multilab_h5ad) -> None:
    data, _ = load_labeled(multilab_h5ad)
    rows = np.array([3, 0, 99])
    got = data.model_input(rows)
    expected = to_model_input(data.X[rows].toarray(), "counts", 1e4)
    assert got.dtype == np.float32 and got.shape == (3, data.n_genes)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(np.expm1(got).sum(axis=1), 1e4, rtol=1e-4)
    lognorm = LabeledData(
        X=sp.csr_matrix(np.array([[0.5, 1.5]], dtype=np.float32)),
        genes=["a", "b"],
        labels=np.array(["x"]),
        batches=np.array(["1"]),
        cell_ids=np.array(["c"]),
        input_kind="lognorm",
    )
    np.testing.assert_array_equal(lognorm.model_input([0]), [[0.5, 1.5]])


def test_inconsistent_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="3 columns but 2 gene names"):
        LabeledData(sp.csr_matrix((2, 3), dtype=np.float32), ["a", "b"], np.array(["x", "y"]),
                    np.array(["1", "1"]), np.array(["c", "d"]), "counts")
    with pytest.raises(ValueError, match="2 rows but labels has 1"):
        LabeledData(sp.csr_matrix((2, 2), dtype=np.float32), ["a", "b"], np.array(["x"]),
                    np.array(["1", "1"]), np.array(["c", "d"]), "counts")


# --- real data sets ---------------------------------------------------------------------------------------


def test_real_sets_are_detected_as_counts_or_lognorm(real_data_dir) -> None:
    cellbench, report = load_labeled(real_data_dir / "cellbench.h5ad")
    assert cellbench.input_kind == "counts" and cellbench.X.shape == (1408, 11533)
    assert report.batch_counts["sc_dropseq"] == 225
    symphony, report = load_labeled(real_data_dir / "symphony_pbmc.h5ad")
    assert symphony.input_kind == "lognorm" and symphony.n_cells == 1200
    assert report.rare_classes == {"HSC": 3, "MK": 7}
    kang, report = load_labeled(real_data_dir / "muscat_kang.h5ad", layer="logcounts")
    assert kang.input_kind == "lognorm" and report.files[0]["matrix"] == "layers/logcounts"
    _, report = load_labeled(real_data_dir / "scclassify_pancreas.h5ad")
    assert set(report.confounded) == {"acinar", "ductal", "stellate"}


def test_real_sets_of_different_kinds_are_refused_together(real_data_dir) -> None:
    with pytest.raises(InputKindError, match="different kinds"):
        load_labeled([real_data_dir / "cellbench_10x.h5ad", real_data_dir / "scannotate_pbmc.h5ad"])


# --- the bundled data set -------------------------------------------------------------------------------


def test_the_bundled_dataset_loads_quickly_as_compact_raw_counts() -> None:
    path = bundled_dataset()
    assert path.stat().st_size < 5 * 10**6
    started = time.perf_counter()
    data, report = load_labeled(path)
    assert time.perf_counter() - started < 5
    assert data.X.shape == (1408, 3000) and data.input_kind == "counts"
    assert report.batch_counts == {
        "sc_celseq2": 274, "sc_celseq2_5cl_p1": 297, "sc_celseq2_5cl_p2": 307, "sc_celseq2_5cl_p3": 305, "sc_dropseq": 225,
    }
    assert data.classes == ["A549", "H1975", "H2228", "H838", "HCC827"]
    assert list(anndata.read_h5ad(path, backed="r").obs.columns) == ["cell_type", "batch", "protocol"]


def test_the_bundled_dataset_matches_its_recorded_sha256() -> None:
    path = bundled_dataset()
    provenance = (path.parent / "PROVENANCE.md").read_text()
    recorded = re.search(r"sha256[^`]*`([0-9a-f]{64})`", provenance)
    assert recorded, "PROVENANCE.md must record the file's sha256"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded.group(1)


def test_the_bundled_dataset_keeps_the_originals_counts(real_data_dir) -> None:
    compact = anndata.read_h5ad(bundled_dataset())
    full = anndata.read_h5ad(real_data_dir / "cellbench.h5ad")
    assert list(compact.obs_names) == list(full.obs_names)
    original = full[:, compact.var_names].X
    assert (sp.csr_matrix(original) != compact.X).nnz == 0
    for column in ("cell_type", "batch", "protocol"):
        assert list(compact.obs[column]) == list(full.obs[column])
