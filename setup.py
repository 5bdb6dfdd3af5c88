"""spinppo: MPI data-parallel PPO, VPG and A2C in PyTorch, in the style of Spinning Up."""

from setuptools import find_packages, setup

install_requires = [
    # 2.13.0 is the CPU build this project is developed and tested with; keep the range admitting it.
    "torch>=2.2,<3",
    "mpi4py>=4",
    "numpy>=2",
    # Every rank limits numpy's BLAS and OpenMP pools at run time (setup_pytorch_for_mpi), whatever
    # launched it: environment variables only work if set before numpy is imported.
    "threadpoolctl>=3.1",
    # classic-control brings pygame, which renders CartPole and Pendulum for test_policy --video.
    "gymnasium[mujoco,classic-control]>=1.1",
    "matplotlib",
    "tensorboard",
    "imageio",
    "imageio-ffmpeg",
    # The only mlagents-envs release that installs on Python 3.11 beside numpy 2.
    "mlagents-envs==0.28.0",
    "protobuf<3.21",
    # --config files (spinppo's YAML and ML-Agents trainer configs).
    "pyyaml>=6",
    # export --onnx and test_policy on .onnx files. The newest releases that accept protobuf 3.20, which
    # mlagents-envs 0.28 needs (onnx 1.18 and onnxruntime 1.27 want protobuf 4 or newer).
    "onnx>=1.14,<1.18",
    "onnxruntime>=1.16,<1.27",
    # Atari games (--env Pong, ALE/<Game>-v5): ale-py ships the ROMs; 0.12's ALEState pickles and
    # restores with its random generator, which exact resume relies on. OpenCV for the 84x84 resize of
    # gymnasium's AtariPreprocessing.
    "ale-py>=0.12,<0.13",
    "opencv-python-headless",
]

setup(
    name="spinppo",
    version="0.1.0",
    description="MPI data-parallel on-policy RL (PPO, VPG, A2C) in PyTorch for gymnasium and Unity ML-Agents",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["spinppo", "spinppo.*"]),
    python_requires=">=3.10",
    install_requires=install_requires,
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout", "ruff>=0.6"],
        # mpirun/mpiexec inside the virtualenv (no system MPI needed); a cluster keeps its own MPI by
        # installing spinppo without this extra (mpi4py then builds against the site's MPI).
        "mpich": ["mpich"],
    },
    entry_points={"console_scripts": ["spinppo=spinppo.run:main"]},
)
