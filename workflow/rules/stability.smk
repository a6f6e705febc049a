# Stage 3c (robustness): features re-extracted on perturbed lesion masks (erosion, dilation,
# one-voxel shifts; Zwanenburg et al., Sci Rep 2019) and ICC(3,1) per feature over the
# perturbations. Each job gets only `stability.perturbations` and its modality's parameter file,
# so a stability setting reruns these jobs only, and extraction/segmentation never.
# Cost is (number of perturbations) x feature extraction, so by default a deterministic
# subsample of subjects is perturbed (`stability.subjects`); ICC uses no labels.


rule stability_features:
    input:
        nifti="results/nifti/{subject}",
        masks="results/masks/{subject}",
        params=radiomics_params,
    output:
        "results/features/stability/{subject}/{modality}.json",
    log:
        "logs/stability/{subject}_{modality}.log",
    benchmark:
        "benchmarks/stability/{subject}_{modality}.tsv"
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        perturbations=config["stability"]["perturbations"],
        code=CODE["stability"],
    script:
        "../scripts/stability_features.py"


rule feature_stability:
    input:
        expand(
            "results/features/stability/{subject}/{modality}.json",
            subject=STABILITY_SUBJECTS,
            modality=STABILITY_MODALITIES,
        ),
    output:
        report(
            "results/tables/feature_stability.csv",
            caption="../report/stability.rst",
            category="Features",
        ),
    log:
        "logs/feature_stability.log",
    benchmark:
        "benchmarks/feature_stability.tsv"
    conda:
        "../../envs/features.yaml"
    params:
        perturbations=config["stability"]["perturbations"],
        code=CODE["stability"],
    script:
        "../scripts/feature_stability.py"
