"""The PyPI-only navigation backend: a 2.5D height/occupancy grid built from the aligned mesh.

Build (cell = ``settings.cell_size_m`` in x and y):
1. every triangle is sampled on a barycentric lattice finer than half a cell, so each sample lands in the cell
   column it covers (walls, whose floor projection is a line, are caught as well as floors);
2. a cell's standing height is its highest walkable sample (face slope within ``agent_max_slope_deg``) lying within
   ``agent_max_climb_m`` of the main floor level;
3. the cell is blocked when any sample lies between climb height and agent height above that standing height
   (furniture, walls, low ceilings); furniture tops are never standing surfaces since they are far above the floor;
4. the walkable mask is eroded by the agent radius (Euclidean distance transform, like Recast's erosion), cells are
   linked to their 8 neighbours (diagonals only when both side cells are walkable, steps only up to the climb
   height) and islands smaller than ``region_min_size²`` cells are dropped.
Shortest paths run scipy's Dijkstra on that graph, then the cell path is pulled taut into corner points by line of
sight on the grid.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree

from pipeline.core.errors import InputError
from scene_graph.geometry import point_box_distance
from scene_graph.navigation.base import Island, NavmeshSettings, Navigator, NavPath, TopDown, prepare_mesh

# Offsets (drow, dcol) of the 8-neighbourhood; the first four are orthogonal.
_NEIGHBOURS = np.array([(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)], dtype=np.int64)
_MAX_SAMPLES_PER_CHUNK = 4_000_000


def _lattice(k: int) -> np.ndarray:
    """Barycentric weights [M, 3] of the points (i/k, j/k) with i + j <= k."""
    i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
    keep = (i + j) <= k
    a, b = i[keep] / k, j[keep] / k
    return np.stack([1.0 - a - b, a, b], axis=1)


def _surface_samples(tris: np.ndarray, step_m: float):
    """Yield chunks (points [S, 3], triangle index [S]) of points on every triangle, at most ``step_m`` apart
    (so every cell whose centre a triangle covers gets a sample of it when ``step_m`` <= half a cell). Chunked to
    bound memory on meshes of millions of faces."""
    edge = np.linalg.norm(tris - np.roll(tris, 1, axis=1), axis=2).max(axis=1)
    k_per_tri = np.maximum(1, np.ceil(edge / step_m).astype(np.int64))
    for k in np.unique(k_per_tri):  # few distinct k: one vectorised product per k
        idx = np.flatnonzero(k_per_tri == k)
        weights = _lattice(int(k))
        per_chunk = max(1, _MAX_SAMPLES_PER_CHUNK // len(weights))
        for lo in range(0, len(idx), per_chunk):
            sel = idx[lo:lo + per_chunk]
            yield np.einsum("mk,tkd->tmd", weights, tris[sel]).reshape(-1, 3), np.repeat(sel, len(weights))


class GridNavigator(Navigator):
    """Navigable floor as a 2.5D grid; see the module docstring for the build."""

    backend = "grid"

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, settings: NavmeshSettings = NavmeshSettings(),
                 source: str = "<mesh>"):
        self.settings = settings
        self.source = str(source)
        vertices, faces, tris, normals, areas, self.floor_z = prepare_mesh(vertices, faces, settings, self.source)

        cs = settings.cell_size_m
        climb, height = settings.agent_max_climb_m, settings.agent_height_m
        lo = vertices[:, :2].min(axis=0) - cs
        self.origin_xy = np.floor(lo / cs) * cs
        self.shape = tuple((np.ceil((vertices[:, :2].max(axis=0) + cs - self.origin_xy) / cs).astype(int) + 1)[::-1])
        rows, cols = self.shape

        walkable_face = normals[:, 2] >= np.cos(np.radians(settings.agent_max_slope_deg))

        def cells(points: np.ndarray) -> np.ndarray:
            col = np.floor((points[:, 0] - self.origin_xy[0]) / cs).astype(np.int64)
            row = np.floor((points[:, 1] - self.origin_xy[1]) / cs).astype(np.int64)
            return row * cols + col

        # Pass 1, standing height: the highest walkable sample within the climb band around the floor level.
        stand_z = np.full(rows * cols, -np.inf)
        for points, owner in _surface_samples(tris, cs / 2.0):
            z = points[:, 2]
            standing = walkable_face[owner] & (np.abs(z - self.floor_z) <= climb)
            np.maximum.at(stand_z, cells(points[standing]), z[standing])
        has_floor = np.isfinite(stand_z)
        # Pass 2, blocked: anything between climb height and agent height above the standing surface.
        blocked = np.zeros(rows * cols, bool)
        for points, _ in _surface_samples(tris, cs / 2.0):
            flat = cells(points)
            rel = points[:, 2] - stand_z[flat]
            blocked[flat[has_floor[flat] & (rel > climb + 1e-9) & (rel < height)]] = True
        walkable = (has_floor & ~blocked).reshape(rows, cols)

        # Erode by the agent radius: drop cells whose centre is within the radius (rounded up to cells) of a
        # non-walkable cell, as Recast's rcErodeWalkableArea does.
        radius_cells = int(np.ceil(settings.agent_radius_m / cs - 1e-9))
        if radius_cells > 0:
            walkable = ndimage.distance_transform_edt(walkable) > radius_cells
        self.height = np.where(walkable, stand_z.reshape(rows, cols), np.nan)   # [rows, cols] metres
        self._build_graph(walkable)

    # ---- graph and islands -------------------------------------------------------------------------------------
    def _build_graph(self, walkable: np.ndarray) -> None:
        rows, cols = self.shape
        cs, climb = self.settings.cell_size_m, self.settings.agent_max_climb_m
        cell_ids = np.flatnonzero(walkable.ravel())
        if len(cell_ids) == 0:
            raise InputError(self.source, (
                f"no navigable floor: every floor cell at z = {self.floor_z:.2f} m is blocked within "
                f"{self.settings.agent_height_m:g} m above it or lies within the agent radius of an obstacle"))
        node_of = np.full(rows * cols, -1, np.int64)
        node_of[cell_ids] = np.arange(len(cell_ids))
        r, c = np.divmod(cell_ids, cols)
        padded = np.zeros((rows + 2, cols + 2), bool)
        padded[1:-1, 1:-1] = walkable
        heights = self.height.ravel()
        src, dst, weight = [], [], []
        for k, (dr, dc) in enumerate(_NEIGHBOURS):
            ok = padded[r + 1 + dr, c + 1 + dc]
            if k >= 4:  # no corner cutting: both orthogonal neighbours must be walkable too
                ok &= padded[r + 1 + dr, c + 1] & padded[r + 1, c + 1 + dc]
            a = cell_ids[ok]
            b = (r[ok] + dr) * cols + (c[ok] + dc)
            ok_step = np.abs(heights[a] - heights[b]) <= climb
            src.append(node_of[a[ok_step]]); dst.append(node_of[b[ok_step]])
            weight.append(np.full(int(ok_step.sum()), cs * (np.sqrt(2.0) if k >= 4 else 1.0)))
        n = len(cell_ids)
        src, dst, weight = np.concatenate(src), np.concatenate(dst), np.concatenate(weight)
        graph = coo_matrix((weight, (src, dst)), shape=(n, n)).tocsr()
        _, labels = connected_components(graph, directed=False)
        sizes = np.bincount(labels)
        min_cells = self.settings.region_min_size ** 2
        # Islands sorted by decreasing size, ties by their first cell: deterministic indices.
        first_cell = np.full(len(sizes), np.iinfo(np.int64).max)
        np.minimum.at(first_cell, labels, np.arange(n))
        order = [int(k) for k in np.lexsort((first_cell, -sizes)) if sizes[k] >= min_cells]
        if not order:
            raise InputError(self.source, (
                f"no navigable floor: the largest walkable patch has {sizes.max() * cs * cs:.2f} m², under the "
                f"minimum island area {self.settings.min_island_area_m2:.2f} m²"))
        remap = np.full(len(sizes), -1, np.int64)
        remap[order] = np.arange(len(order))
        island = remap[labels]
        keep = island >= 0
        # Rebuild the node set without the dropped islands.
        self._cells = cell_ids[keep]                              # flat cell index per node
        self._island = island[keep]                               # island per node
        self._island_sizes = np.bincount(self._island, minlength=len(order))
        graph = graph[keep][:, keep].tocsr()
        self._graph = graph
        self._node_of = np.full(rows * cols, -1, np.int64)
        self._node_of[self._cells] = np.arange(len(self._cells))
        dropped = cell_ids[~keep]
        self.height.ravel()[dropped] = np.nan
        r, c = np.divmod(self._cells, cols)
        self._centres = np.stack([self.origin_xy[0] + (c + 0.5) * self.settings.cell_size_m,
                                  self.origin_xy[1] + (r + 0.5) * self.settings.cell_size_m], axis=1)
        self._trees: dict[int | None, tuple[cKDTree, np.ndarray]] = {}
        self._shortest_trees: dict[int, np.ndarray] = {}           # source node -> Dijkstra predecessors
        grid = np.full(rows * cols, -1, np.int64)
        grid[self._cells] = self._island
        self._island_grid = grid.reshape(rows, cols)                # island per cell, -1 = not navigable

    @property
    def islands(self) -> list[Island]:
        cell_area = self.settings.cell_size_m ** 2
        return [Island(int(k), float(s * cell_area)) for k, s in enumerate(self._island_sizes)]

    # ---- point queries -------------------------------------------------------------------------------------------
    def _node_at(self, points: np.ndarray) -> np.ndarray:
        """Graph node [N] under each point's xy, -1 outside the navigable cells."""
        cs = self.settings.cell_size_m
        rows, cols = self.shape
        col = np.floor((points[:, 0] - self.origin_xy[0]) / cs).astype(np.int64)
        row = np.floor((points[:, 1] - self.origin_xy[1]) / cs).astype(np.int64)
        inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
        node = np.full(len(points), -1, np.int64)
        node[inside] = self._node_of[row[inside] * cols + col[inside]]
        return node

    def island_of(self, points: np.ndarray) -> np.ndarray:
        node = self._node_at(np.asarray(points, np.float64).reshape(-1, 3))
        return np.where(node >= 0, self._island[np.maximum(node, 0)], -1)

    def is_navigable(self, points: np.ndarray, max_dz_m: float = 0.5) -> np.ndarray:
        points = np.asarray(points, np.float64).reshape(-1, 3)
        node = self._node_at(points)
        ok = node >= 0
        z = np.full(len(points), np.nan)
        z[ok] = self.height.ravel()[self._cells[node[ok]]]
        ok[ok] = np.abs(points[ok, 2] - z[ok]) <= max_dz_m
        return ok

    def _tree(self, island: int | None) -> tuple[cKDTree, np.ndarray]:
        if island not in self._trees:
            nodes = np.arange(len(self._cells)) if island is None else np.flatnonzero(self._island == island)
            self._trees[island] = (cKDTree(self._centres[nodes]), nodes)
        return self._trees[island]

    def _snap_nodes(self, points: np.ndarray, island: int | None = None) -> np.ndarray:
        """Node [N] of each point: the cell under it when navigable (and on ``island``), else the nearest one."""
        node = self._node_at(points)
        if island is not None:
            node[(node >= 0) & (self._island[np.maximum(node, 0)] != island)] = -1
        missing = node < 0
        if missing.any():
            tree, nodes = self._tree(island)
            if len(nodes) == 0:
                return node
            _, k = tree.query(points[missing, :2])
            node[missing] = nodes[k]
        return node

    def _point_of(self, node: np.ndarray, xy: np.ndarray | None = None) -> np.ndarray:
        z = self.height.ravel()[self._cells[node]]
        base = self._centres[node] if xy is None else xy
        return np.column_stack([base, z])

    def snap(self, points: np.ndarray, island: int | None = None) -> np.ndarray:
        points = np.asarray(points, np.float64).reshape(-1, 3)
        out = np.full_like(points, np.nan)
        node = self._snap_nodes(points, island)
        ok = node >= 0
        if ok.any():
            # A point already on a navigable cell keeps its xy; others go to the nearest cell centre.
            own = self._node_at(points[ok]) == node[ok]
            xy = np.where(own[:, None], points[ok, :2], self._centres[node[ok]])
            out[ok] = self._point_of(node[ok], xy)
        return out

    def sample_point(self, rng: np.random.Generator, island: int | None = 0, near_box: tuple | None = None,
                     max_distance_m: float = 1.0) -> np.ndarray | None:
        nodes = np.arange(len(self._cells)) if island is None else np.flatnonzero(self._island == island)
        if near_box is not None and len(nodes):
            centroid, lengths, axes = (np.asarray(a, np.float64) for a in near_box)
            # Distance to the box's floor footprint: query at the box's mid height (upright boxes).
            q = np.column_stack([self._centres[nodes], np.full(len(nodes), centroid[2])])
            nodes = nodes[point_box_distance(q, centroid, lengths, axes.reshape(3, 3)) <= max_distance_m]
        if len(nodes) == 0:
            return None
        return self._point_of(nodes[int(rng.integers(len(nodes)))][None])[0]

    # ---- paths -------------------------------------------------------------------------------------------------
    def _visible(self, origin: np.ndarray, targets: np.ndarray, island: int) -> np.ndarray:
        """True [T] where the straight xy segment origin -> target stays on navigable cells of ``island``
        (sampled every half cell; obstacles are at least the agent radius, two cells, beyond the navigable cells)."""
        if len(targets) == 0:
            return np.zeros(0, bool)
        cs = self.settings.cell_size_m
        length = np.linalg.norm(targets[:, :2] - origin[:2], axis=1)
        m = max(2, int(np.ceil(length.max() / (cs / 2.0))) + 1)
        t = np.linspace(0.0, 1.0, m)
        rel = (origin[:2] - self.origin_xy) / cs
        span = (targets[:, None, :2] - origin[:2]) / cs
        cells = np.floor(rel + t[None, :, None] * span).astype(np.int64)     # [T, m, 2] (col, row)
        rows, cols = self.shape
        inside = (cells[..., 0] >= 0) & (cells[..., 0] < cols) & (cells[..., 1] >= 0) & (cells[..., 1] < rows)
        on = np.zeros(inside.shape, bool)
        on[inside] = self._island_grid[cells[..., 1][inside], cells[..., 0][inside]] == island
        return on.all(axis=1)

    def _greedy_corners(self, points: np.ndarray, island: int) -> np.ndarray:
        """Indices of corners by walking forward while the segment from the last corner stays visible."""
        corners = [0]
        i, n = 0, len(points)
        while i < n - 1:
            visible = self._visible(points[i], points[i + 1:], island)
            blocked = np.flatnonzero(~visible)
            i = n - 1 if len(blocked) == 0 else i + max(1, int(blocked[0]))
            corners.append(i)
        return np.asarray(corners, np.int64)

    def _pull_taut(self, points: np.ndarray, island: int, window: int = 4) -> np.ndarray:
        """Corner points of a cell path, pulled taut.

        A greedy line-of-sight walk finds the corners to within a few cells; the shortest visible chain through
        the cell-path points near those corners (a dynamic programme over a small visibility graph, points in path
        order) then places each corner where the taut string actually touches the obstacle.
        """
        n = len(points)
        if n <= 2:
            return points
        greedy = self._greedy_corners(points, island)
        near = (greedy[:, None] + np.arange(-window, window + 1)[None, :]).ravel()
        cand = np.unique(np.clip(near, 0, n - 1))
        pts = points[cand]
        m = len(pts)
        best = np.full(m, np.inf)
        best[0] = 0.0
        parent = np.zeros(m, np.int64)
        for i in range(m - 1):
            targets = np.arange(i + 1, m)
            visible = self._visible(pts[i], pts[targets], island)
            # Consecutive candidates are joined by the cell path itself when they are neighbours on it.
            visible[0] |= cand[i + 1] - cand[i] == 1
            j = targets[visible]
            cost = best[i] + np.linalg.norm(pts[j] - pts[i], axis=1)
            better = cost < best[j] - 1e-12
            best[j[better]] = cost[better]
            parent[j[better]] = i
        if not np.isfinite(best[-1]):   # cannot happen when greedy corners see each other; keep the greedy chain
            return points[greedy]
        chain = [m - 1]
        while chain[-1] != 0:
            chain.append(int(parent[chain[-1]]))
        return pts[chain[::-1]]

    def _path_from_tree(self, predecessors: np.ndarray, source: int, target: int) -> np.ndarray:
        chain = [target]
        while chain[-1] != source:
            chain.append(int(predecessors[chain[-1]]))
        return np.array(chain[::-1], dtype=np.int64)

    def _taut_path(self, start: np.ndarray, goal: np.ndarray, s: int, g: int, nodes: np.ndarray) -> NavPath:
        island = int(self._island[s])
        pts = self._point_of(nodes)
        pts[0], pts[-1] = start, goal
        corners = self._pull_taut(pts, island)
        return NavPath(corners, float(np.linalg.norm(np.diff(corners, axis=0), axis=1).sum()))

    def _endpoint(self, point: np.ndarray) -> tuple[int, np.ndarray]:
        node = int(self._snap_nodes(point[None])[0])
        return node, (self.snap(point[None])[0] if node >= 0 else point)

    def _predecessors(self, source: int) -> np.ndarray:
        """Dijkstra shortest-path tree from a node (the graph is symmetric; a few trees are kept, since routes
        leave the same anchors many times)."""
        tree = self._shortest_trees.get(source)
        if tree is None:
            _, tree = dijkstra(self._graph, directed=True, indices=source, return_predecessors=True)
            if len(self._shortest_trees) >= 32:
                self._shortest_trees.pop(next(iter(self._shortest_trees)))
            self._shortest_trees[source] = tree
        return tree

    def shortest_path(self, start: np.ndarray, goal: np.ndarray) -> NavPath:
        s, start = self._endpoint(np.asarray(start, np.float64).reshape(3))
        g, goal = self._endpoint(np.asarray(goal, np.float64).reshape(3))
        if s < 0 or g < 0 or self._island[s] != self._island[g]:
            return NavPath(np.zeros((0, 3)), float("inf"))
        if s == g:
            return NavPath(np.stack([start, goal]), float(np.linalg.norm(goal - start)))
        return self._taut_path(start, goal, s, g, self._path_from_tree(self._predecessors(s), s, g))

    def geodesic_distance(self, points: np.ndarray, goal: np.ndarray) -> np.ndarray:
        # One Dijkstra from the goal serves every point; each cell path is then pulled taut.
        points = np.asarray(points, np.float64).reshape(-1, 3)
        g, goal = self._endpoint(np.asarray(goal, np.float64).reshape(3))
        out = np.full(len(points), np.inf)
        if g < 0:
            return out
        pred = self._predecessors(g)
        for k, p in enumerate(points):
            s, start = self._endpoint(p)
            if s < 0 or self._island[s] != self._island[g]:
                continue
            if s == g:
                out[k] = float(np.linalg.norm(goal - start))
                continue
            nodes = self._path_from_tree(pred, g, s)[::-1]
            out[k] = self._taut_path(start, goal, s, g, nodes).length_m
        return out

    def line_of_sight(self, start: np.ndarray, goal: np.ndarray) -> bool:
        start = np.asarray(start, np.float64).reshape(3)
        goal = np.asarray(goal, np.float64).reshape(3)
        island = self.island_of(start[None])[0]
        return bool(island >= 0 and self._visible(start, goal[None], int(island))[0])

    def topdown(self) -> TopDown:
        return TopDown(self._island_grid.copy(), self.origin_xy.copy(), self.settings.cell_size_m,
                       {"floor_z": self.floor_z})
