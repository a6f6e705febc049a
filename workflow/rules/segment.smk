# Stage 2: the calcific mass on CT, carried onto the MR and PET grids; QC figures and table.


rule segment:
    input:
        unpack(user_masks),
        nifti="results/nifti/{subject}",
        truth=truth_mask,
    output:
        directory("results/masks/{subject}"),
    log:
        "logs/segment/{subject}.log",
    benchmark:
        "benchmarks/segment/{subject}.tsv"
    group:
        "subject"
    conda:
        "../../envs/segment.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        segmentation=config["segmentation"],
        code=CODE["segment"],
    script:
        "../scripts/segment.py"


rule qc:
    input:
        nifti="results/nifti/{subject}",
        masks="results/masks/{subject}",
    output:
        report(
            "results/qc/{subject}.png",
            caption="../report/qc.rst",
            category="Segmentation QC",
            subcategory="{subject}",
        ),
    log:
        "logs/qc/{subject}.log",
    benchmark:
        "benchmarks/qc/{subject}.tsv"
    group:
        "subject"
    conda:
        "../../envs/segment.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=CODE["qc"],
    script:
        "../scripts/qc.py"


rule segmentation_table:
    input:
        expand("results/masks/{subject}", subject=SUBJECTS),
    output:
        report(
            "results/tables/segmentation.csv",
            caption="../report/segmentation.rst",
            category="Segmentation QC",
        ),
    log:
        "logs/segmentation_table.log",
    benchmark:
        "benchmarks/segmentation_table.tsv"
    conda:
        "../../envs/segment.yaml"
    script:
        "../scripts/segmentation_table.py"
