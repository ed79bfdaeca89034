"""The one h5ad row reader: CSR, dense and CSC rows, column subsets, names, and broken files refused."""

from __future__ import annotations

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from model.errors import InputError
from model.h5ad import H5adRows, H5adTooLargeError, NotAnnDataError, NotH5adError, inspect_h5ad
from model.sparse import SparseStructureError


def write(path, X, genes=None):
    n_cells, n_genes = X.shape
    genes = genes or [f"g{i}" for i in range(n_genes)]
    anndata.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]), var=pd.DataFrame(index=genes)).write_h5ad(path)
    return path


@pytest.fixture
def counts(seed):
    return sp.random(50, 8, density=0.4, format="csr", random_state=seed, dtype=np.float32) * 10


@pytest.mark.parametrize("layout", ["csr", "dense", "csc"])
def test_row_ranges_equal_the_matrix_whatever_the_layout(tmp_path, counts, layout) -> None:
    X = {"csr": counts, "dense": counts.toarray(), "csc": counts.tocsc()}[layout]
    path = write(tmp_path / f"{layout}.h5ad", X)
    with H5adRows(path, allow_csc=True) as reader:
        assert (reader.n_cells, reader.n_genes) == (50, 8)
        assert reader.genes == [f"g{i}" for i in range(8)]
        assert list(reader.cell_ids(3, 5)) == ["c3", "c4"]
        np.testing.assert_array_equal(reader.read_csr(10, 37).toarray(), counts[10:37].toarray())
        columns = np.array([5, 0, 2])
        np.testing.assert_array_equal(reader.read_csr(0, 50, columns).toarray(), counts[:, columns].toarray())


def test_csc_is_refused_unless_allowed(tmp_path, counts) -> None:
    path = write(tmp_path / "csc.h5ad", counts.tocsc())
    with pytest.raises(InputError, match=r"CSC.*tocsr\(\)"):
        H5adRows(path)


def corrupt(path, name, values):
    with h5py.File(path, "r+") as handle:
        del handle[f"X/{name}"]
        handle[f"X/{name}"] = values


def test_a_block_with_an_index_past_the_genes_is_refused_when_read(tmp_path, counts) -> None:
    path = write(tmp_path / "far.h5ad", counts)
    indices = counts.indices.copy()
    indices[counts.indptr[30]] = 10**7
    corrupt(path, "indices", indices)
    with H5adRows(path) as reader:
        reader.read(0, 30)
        with pytest.raises(SparseStructureError, match="column index 10000000 at row 30 is outside the 8 genes"):
            reader.read(25, 40)


def test_structure_faults_found_on_opening(tmp_path, counts) -> None:
    path = write(tmp_path / "short.h5ad", counts)
    corrupt(path, "data", counts.data[:5])
    with pytest.raises(SparseStructureError, match="values but .* column indices"):
        H5adRows(path)
    path = write(tmp_path / "ptr.h5ad", counts)
    corrupt(path, "indptr", counts.indptr[:-3])
    with pytest.raises(SparseStructureError, match="row pointers"):
        H5adRows(path)
    path = write(tmp_path / "float.h5ad", counts)
    corrupt(path, "indices", counts.indices.astype(float))
    with pytest.raises(SparseStructureError, match="not integers"):
        H5adRows(path)


def test_backward_row_pointers_are_refused_naming_the_row(tmp_path, counts) -> None:
    path = write(tmp_path / "back.h5ad", counts)
    indptr = counts.indptr.copy()
    indptr[17] = indptr[16] - 1
    corrupt(path, "indptr", indptr)
    with H5adRows(path) as reader, pytest.raises(SparseStructureError, match="decrease at row 17"):
        reader.read(0, 50)


def test_string_matrices_and_non_anndata_files(tmp_path) -> None:
    path = tmp_path / "strings.h5ad"
    write(path, np.zeros((2, 2), np.float32))
    with h5py.File(path, "r+") as handle:
        del handle["X"]
        handle["X"] = np.array([[b"a", b"b"], [b"c", b"d"]])
    with pytest.raises(InputError, match="must be numeric"):
        H5adRows(path)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as handle:
        handle["values"] = np.arange(3)
    with pytest.raises(NotAnnDataError):
        H5adRows(plain)
    text = tmp_path / "text.h5ad"
    text.write_text("not hdf5")
    with pytest.raises(NotH5adError):
        H5adRows(text)
    with pytest.raises(NotH5adError):
        inspect_h5ad(text, 10**6)


def test_expansion_limit(tmp_path) -> None:
    path = tmp_path / "zeros.h5ad"
    anndata.AnnData(X=np.zeros((1000, 50), np.float32)).write_h5ad(path, compression="gzip")
    inspect_h5ad(path, 10**6)
    with pytest.raises(H5adTooLargeError, match="expands to"):
        inspect_h5ad(path, 100_000)
