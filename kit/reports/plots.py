"""Every picture the kit draws (the evaluation's, the synthetic-data study's), off-screen (no
display needed) and written atomically."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from kit.io import save_figure  # noqa: E402


def save_and_close(fig, path):
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


def _drawable(y_true, k) -> bool:
    return 0 < y_true[:, k].sum() < len(y_true)


def roc_curves(y_true, y_prob, classes, aucs, path, split="test"):
    """One ROC curve per class of the `split` set, its AUC in the legend, the chance diagonal behind."""
    from sklearn.metrics import roc_curve  # imported here: the metadata stage's chart needs no scikit-learn

    y_true = np.asarray(y_true)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="chance")
    for k, name in enumerate(classes):
        if _drawable(y_true, k):
            fpr, tpr, _ = roc_curve(y_true[:, k], y_prob[:, k])
            ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUC {aucs[k]:.3f})")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           xlim=(0, 1), ylim=(0, 1.01), title=f"ROC curves, {split} set")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    save_and_close(fig, path)


def pr_curves(y_true, y_prob, classes, aps, path):
    """Precision-recall per class; a dotted line at each class's prevalence is chance level."""
    from sklearn.metrics import precision_recall_curve

    y_true = np.asarray(y_true)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for k, name in enumerate(classes):
        if _drawable(y_true, k):
            precision, recall, _ = precision_recall_curve(y_true[:, k], y_prob[:, k])
            line, = ax.plot(recall, precision, lw=1.8, label=f"{name} (AP {aps[k]:.3f})")
            ax.axhline(y_true[:, k].mean(), ls=":", lw=1, c=line.get_color())
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (positive predictive value)",
           xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall curves, test set (dotted: prevalence)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    save_and_close(fig, path)


def confusion_matrix(counts, classes, path):
    """Row-normalized confusion matrix; each cell shows its count and its share of the row."""
    counts = np.asarray(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.nan_to_num(counts / counts.sum(1, keepdims=True))
    size = 1.2 + 0.9 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix, test set (row %)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, format=PercentFormatter(1.0))
    save_and_close(fig, path)


def training_curves(history, path):
    """Losses and validation AUC per epoch from history.csv."""
    epochs = history["epoch"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for col in ("train_loss", "val_loss"):
        if col in history:
            left.plot(epochs, history[col], marker="o", label=col.replace("_", " "))
    left.set(xlabel="epoch", ylabel="loss", title="Loss")
    left.legend()
    for col in [c for c in history.columns if c.startswith("val_auc_")]:
        right.plot(epochs, history[col], lw=1, alpha=0.7, label=col[len("val_auc_"):])
    if "val_macro_auc" in history:
        right.plot(epochs, history["val_macro_auc"], marker="o", lw=2.5, c="black", label="macro")
    right.set(xlabel="epoch", ylabel="ROC AUC", title="Validation AUC")
    # the competition's 14 findings would cover the curves: their legend goes beside the plot
    right.legend(fontsize=8, **({"loc": "center left", "bbox_to_anchor": (1.01, 0.5)} if len(right.lines) > 8 else {}))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_and_close(fig, path)


def class_distribution(dist, path):
    """Images per class as horizontal bars, with patient counts written beside them."""
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(dist) + 1.2))
    bars = ax.barh(dist["class"], dist["images"], color="tab:blue")
    ax.bar_label(bars, labels=[f"{i} images, {p} patients" for i, p in zip(dist["images"], dist["patients"])],
                 padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.set_xlim(0, dist["images"].max() * 1.45)
    ax.set_title("Class distribution after filtering")
    save_and_close(fig, path)


# the synthetic-data study ----------------------------------------------------------------------

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
