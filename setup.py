"""Install the CADyQ plugin for BasicSR (``pip install -e .``)."""
from setuptools import find_packages, setup

setup(
    name='cadyq-plugin',
    version='0.1.0',
    description='CADyQ (content-aware dynamic quantization for SR, ECCV 2022) as a BasicSR plugin',
    packages=find_packages(include=['cadyq_plugin', 'cadyq_plugin.*']),
    python_requires='>=3.9',
    install_requires=[
        'torch>=2.1',
        'torchvision',
        'basicsr==1.4.2',
        'mmengine',
        'lmdb',
        'opencv-python',
        'pyyaml',
        'tensorboard',
        'scikit-image',
        'tqdm',
    ],
    extras_require={
        'onnx': ['onnx', 'onnxscript', 'onnxruntime'],
        'plots': ['matplotlib'],
        'test': ['pytest', 'onnx', 'onnxscript', 'onnxruntime', 'matplotlib'],
    },
    entry_points={'console_scripts': ['basicsr = cadyq_plugin.cli:main']},
)
