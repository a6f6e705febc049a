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
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        code=CODE["features"],
    shell:
        '"$CALCIRAD_PYTHON" -m calcirad.steps features --subject {wildcards.subject:q}'
        " --modality {wildcards.modality} --nifti {input.nifti:q} --masks {input.masks:q}"
        " --params {input.params:q} --out {output:q} --log {log:q}"


rule features_table:
    input:
        expand(
            "results/features/subjects/{subject}/{{modality}}.json", subject=SUBJECTS
        ),
    output:
        "results/features/{modality}.csv",
    log:
        "logs/features_table/{modality}.log",
    benchmark:
        "benchmarks/features_table/{modality}.tsv"
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
    benchmark:
        "benchmarks/features_all.tsv"
    conda:
        "../../envs/features.yaml"
    params:
        modalities=MODALITIES,
    script:
        "../scripts/features_all.py"


rule ibsi_compliance:
    input:
        reference=IBSI_DIR / "ibsi1_digital_phantom_reference_values.csv",
        image=IBSI_DIR / "ibsi_1_digital_phantom/nifti/image/phantom.nii.gz",
        mask=IBSI_DIR / "ibsi_1_digital_phantom/nifti/mask/mask.nii.gz",
        params=[
            workflow_path(f"config/radiomics/ibsi_phantom{v}.yaml")
            for v in IBSI_VARIANTS
        ],
    output:
        report(
            "results/tables/ibsi_compliance.csv",
            caption="../report/ibsi.rst",
            category="Features",
        ),
    log:
        "logs/ibsi_compliance.log",
    benchmark:
        "benchmarks/ibsi_compliance.tsv"
    conda:
        "../../envs/features.yaml"
    params:
        code=CODE["features"],
    script:
        "../scripts/ibsi_compliance.py"
