# Stage 1b: dcm2niix conversion of each chosen series, verified voxel by voxel against pydicom and
# slice by slice against ImagePositionPatient; PET scaled to SUV.


rule convert:
    input:
        inventory="results/ingest/{subject}.json",
    output:
        directory("results/nifti/{subject}"),
    log:
        "logs/convert/{subject}.log",
    benchmark:
        "benchmarks/convert/{subject}.tsv"
    conda:
        "../../envs/ingest.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        study=study_dir,
        conversion=as_json(config["conversion"]),
        code=CODE["convert"],
    shell:
        '"$CALCIRAD_PYTHON" -m calcirad.steps convert --subject {wildcards.subject:q}'
        " --inventory {input.inventory:q} --study {params.study:q}"
        " --conversion {params.conversion:q} --out {output:q} --log {log:q}"
