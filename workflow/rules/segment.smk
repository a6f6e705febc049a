# Stage 2: the calcific mass on CT, carried onto the MR and PET grids; QC figures and table.


rule segment:
    input:
        unpack(user_masks),
        unpack(truth_masks),
        nifti="results/nifti/{subject}",
    output:
        directory("results/masks/{subject}"),
    log:
        "logs/segment/{subject}.log",
    benchmark:
        "benchmarks/segment/{subject}.tsv"
    conda:
        "../../envs/segment.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        segmentation=as_json(config["segmentation"]),
        optional=optional_input_options,
        code=CODE["segment"],
    shell:
        '"$CALCIRAD_PYTHON" -m calcirad.steps segment --subject {wildcards.subject:q}'
        " --nifti {input.nifti:q} --segmentation {params.segmentation:q} {params.optional}"
        " --out {output:q} --log {log:q}"


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
    conda:
        "../../envs/segment.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=CODE["qc"],
    shell:
        '"$CALCIRAD_PYTHON" -m calcirad.steps qc --subject {wildcards.subject:q}'
        " --nifti {input.nifti:q} --masks {input.masks:q} --out {output:q} --log {log:q}"


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
