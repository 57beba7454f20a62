"""The synthetic-data study's pictures, drawn off-screen and written atomically."""
import numpy as np

from kit.plots import plt, save_and_close


def synthetic_grid(pairs: dict, path):
    """pairs: {class: [(synthetic image, nearest real image, its split, ratio, near copy)]}. Per
    class, a row of synthetic images, each above its nearest real image; near-copies in red."""
    cols = max(len(p) for p in pairs.values())
    fig, axes = plt.subplots(2 * len(pairs), cols, figsize=(1.6 * cols, 3.4 * len(pairs)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (name, row) in enumerate(pairs.items()):
        for c, (fake, real, split, ratio, copy) in enumerate(row):
            top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
            top.imshow(fake, cmap="gray", vmin=0, vmax=255)
            bottom.imshow(real, cmap="gray", vmin=0, vmax=255)
            top.set_title(f"ratio {ratio:.2f}", fontsize=7, color="red" if copy else "black")
            bottom.set_title(split, fontsize=7, color="red" if copy and split != "train" else "black")
            for ax in (top, bottom):
                ax.axis("on")
                ax.set(xticks=[], yticks=[])
                for spine in ax.spines.values():
                    spine.set(color="red" if copy else "0.7", linewidth=2 if copy else 0.5)
        axes[2 * r, 0].set_ylabel(f"{name}\nsynthetic", fontsize=8)
        axes[2 * r + 1, 0].set_ylabel("nearest real", fontsize=8)
    fig.suptitle("Synthetic images (top) above their nearest real image (bottom), closest first;\n"
                 "ratio: distance / median real-to-nearest-real distance (red: near-copy)", fontsize=9)
    save_and_close(fig, path)


def generated_grid(rows: dict, path):
    """rows: {class: (generated images, real train images)}. Per class, a row of each."""
    cols = max(max(len(fake), len(real)) for fake, real in rows.values())
    fig, axes = plt.subplots(2 * len(rows), cols, figsize=(1.4 * cols, 3.0 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (name, pair) in enumerate(rows.items()):
        for k, (kind, images) in enumerate(zip(("generated", "real train"), pair)):
            for c, img in enumerate(images):
                ax = axes[2 * r + k, c]
                ax.imshow(img, cmap="gray", vmin=0, vmax=255)
                ax.axis("on")
                ax.set(xticks=[], yticks=[])
            axes[2 * r + k, 0].set_ylabel(f"{name}\n{kind}", fontsize=8)
    fig.suptitle("Generated images (top) beside real train images of the same class (bottom)", fontsize=9)
    save_and_close(fig, path)


def compare_runs(table, names, specificity, path):
    """Left: test AUC per class of both runs. Right: B - A with its paired bootstrap 95% interval."""
    labels = table["class"].tolist()
    y = np.arange(len(labels))[::-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.55 * len(labels) + 1.8), sharey=True)
    left.scatter(table["auc_a"], y, marker="o", label=f"A: {names[0]}")
    left.scatter(table["auc_b"], y, marker="D", label=f"B: {names[1]}")
    left.set(yticks=y, yticklabels=labels, xlabel="test ROC AUC", title="AUC per class")
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    colors = {"better": "tab:green", "worse": "tab:red"}
    for yi, row in zip(y, table.to_dict("records")):
        color = colors.get(row["verdict"], "0.4")
        error = [[row["auc_diff"] - row["ci_low"]], [row["ci_high"] - row["auc_diff"]]]
        right.errorbar(row["auc_diff"], yi, xerr=error, fmt="o", color=color, capsize=3)
        sens = ""
        if np.isfinite(row["sens_a"]):
            sens = f"; sens@{specificity:.0%} spec {row['sens_a']:.2f} -> {row['sens_b']:.2f}"
        right.annotate(f"{row['verdict']}, p={row['p_value']:.3f}{sens}", (row["ci_high"], yi), xytext=(4, 0),
                       textcoords="offset points", va="center", fontsize=7)
    right.axvline(0, color="0.5", lw=1, ls="--")
    right.set(xlabel="AUC difference B - A (paired bootstrap 95% interval)", title="Difference")
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    save_and_close(fig, path)
