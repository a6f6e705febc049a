# Stage 3: pyradiomics features + conventional measures per subject and modality. Each modality's
# parameter file is an input of that modality's jobs only, so editing config/radiomics/pet.yaml
# reruns PET extraction (and what depends on it), not CT or MR.


rule extract_features:
    input:
        nifti="results/nifti/{subject}",
        masks="results/masks/{subject}",
        params=radiomics_params,
    output:
        "results/features/subjects/{subject}/{modality}.json",
    log:
        "logs/features/{subject}_{modality}.log",
    benchmark:
        "benchmarks/features/{subject}_{modality}.tsv"
    group:
        "subject"
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        code=CODE["features"],
    script:
        "../scripts/extract_features.py"


rule features_table:
    input:
        expand(
            "results/features/subjects/{subject}/{{modality}}.json", subject=SUBJECTS
        ),
    output:
        "results/features/{modality}.csv",
    log:
        "logs/features_table/{modality}.log",
    conda:
        "../../envs/features.yaml"
    script:
        "../scripts/features_table.py"


rule features_all:
    input:
        tables=expand("results/features/{modality}.csv", modality=MODALITIES),
        params=[config["radiomics"][m] for m in MODALITIES],
    output:
        table=report(
            "results/features/all.csv",
            caption="../report/features.rst",
            category="Features",
        ),
        provenance="results/features/provenance.json",
    log:
        "logs/features_all.log",
    conda:
        "../../envs/features.yaml"
    params:
        modalities=MODALITIES,
    script:
        "../scripts/features_all.py"
