"""Install gpusq_mm. The OpenMMLab stack itself is installed by
``tools/setup_env.sh`` (mmcv needs a source build with compiled ops)."""
import os

from setuptools import find_packages, setup


def read_requirements(name):
    path = os.path.join(os.path.dirname(__file__), 'requirements', name)
    with open(path) as f:
        return [
            line.strip() for line in f
            if line.strip() and not line.startswith('#')
        ]


def read_version():
    ns = {}
    with open(os.path.join('gpusq_mm', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


setup(
    name='gpusq_mm',
    version=read_version(),
    description='GPU-friendly 2:4 sparsity + quantization (GPUSQ) for '
    'OpenMMLab models',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    include_package_data=True,
    python_requires='>=3.8',
    install_requires=read_requirements('runtime.txt'),
    extras_require=dict(
        deploy=read_requirements('optional.txt'),
        tests=read_requirements('tests.txt'),
        build=read_requirements('build.txt')),
    license='Apache License 2.0',
    zip_safe=False)
